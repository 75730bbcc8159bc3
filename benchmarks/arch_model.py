"""A timing bundle of an extractor at any size: seeded random weights, exported by the repo's code.

The paper's extractor (ResNet-50 at 288x144) is what a deployment runs, while the demo bundle is a
small ResNet-18 at 64x32; engines and precisions rank differently at the two sizes, so the
benchmark times both. This builds the RGB extractor of ``arch`` at ``size`` with seeded random
weights (BatchNorm statistics re-estimated on synthetic person images so activations have real
ranges), exports it with ``export.onnx_graphs`` and ``export.quantize`` (u8 QDQ int8, calibrated
on synthetic *training-split* images) and writes a bundle with the fp32, int8 and OpenVINO
variants plus the checkpoint for the torch baseline. The parity gate does not judge random
weights: the bundle is ungated and opened with ``allow_ungated``. Needs torch (the export side).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

GRAPH = "extractor_rgb"
CALIB_IMAGES = 32


def model_dir(out: Path, arch: str, size: tuple[int, int], seed: int) -> Path:
    return Path(out) / "models" / f"{arch}-{size[0]}x{size[1]}-seed{seed}"


def _random_model(arch: str, size: tuple[int, int], seed: int, images):
    import torch

    from train.config import SSFTConfig
    from train.model import SSFTModel

    torch.manual_seed(seed)
    cfg = SSFTConfig(arch=arch, height=size[0], width=size[1], num_classes=4, pretrained=None)
    model = SSFTModel(cfg, load_pretrained=False)
    for m in model.modules():  # cumulative BN statistics over the synthetic batches
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 8):
            model.extract(torch.from_numpy(images[i:i + 8]), modality="rgb")
    return model.eval()


def prepare(out: Path, arch: str, size: tuple[int, int], seed: int = 0,
            say: Callable[[str], None] = print) -> Path:
    """The bundle folder for (arch, size, seed), built once and reused (its manifest records
    them); returns the folder, holding ``manifest.json`` and ``model.pth``."""
    root = model_dir(out, arch, size, seed)
    manifest_path = root / "manifest.json"
    want = {"arch": arch, "input_size": list(size), "seed": seed}
    if (manifest_path.is_file() and (root / "model.pth").is_file()
            and json.loads(manifest_path.read_text()).get("export", {}).get("random_model") == want):
        say(f"reusing the {arch} {size[0]}x{size[1]} timing bundle in {root}")
        return root
    import torch

    from export import manifest as mf
    from export.images import calibration_images
    from export.onnx_graphs import export_extractor
    from export.openvino_variants import openvino_variants
    from export.quantize import quantize_int8
    from ssft_deploy.bundle import write_manifest
    from ssft_deploy.datasets import synthetic
    from ssft_deploy.preprocess import Preprocessor
    from train.model import save_checkpoint

    torch.set_num_threads(max(1, torch.get_num_threads()))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "synthetic"
    synthetic.generate_sysu(data, num_train=8, num_val=1, num_test=2, rgb_per_cam=2, size=size,
                            seed=seed)
    images = calibration_images(data, "rgb", Preprocessor(size), CALIB_IMAGES)
    say(f"building {arch} at {size[0]}x{size[1]} with seeded random weights (seed {seed})")
    model = _random_model(arch, size, seed, images)
    save_checkpoint(model, root / "model.pth")
    say(f"exporting {GRAPH} to ONNX (fp32) and int8 (u8 QDQ, {len(images)} calibration images)")
    export_extractor(model, "rgb", root / f"{GRAPH}.onnx", size)
    quantize_int8(root / f"{GRAPH}.onnx", root / f"{GRAPH}.int8.onnx", images, activations="u8")
    variants = {"fp32": {GRAPH: mf.file_entry(root, f"{GRAPH}.onnx")},
                "int8": {GRAPH: mf.file_entry(root, f"{GRAPH}.int8.onnx", activations="u8")}}
    variants.update(openvino_variants(root, variants, say))
    info = mf.model_section(model)
    write_manifest(root, mf.build_manifest(info, variants, export={"random_model": want}))
    return root
