"""Building TensorRT engines from a bundle's ONNX graphs (TensorRT 10 / 11, strongly typed).

Precision lives in the graph (fp16 graphs carry their casts; int8 graphs their Q/DQ nodes), so
the network is built strongly typed and no precision builder flag is set (TensorRT 11 removed
them). Used by the export (``ssft-export --trt``) and by ``open_engine(..., rebuild=True)`` when a
bundle's engine was built for another GPU or TensorRT version. Needs tensorrt and a GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssft_deploy.bundle import (
    Bundle,
    current_trt_platform,
    load_bundle,
    sha256_file,
    write_manifest,
)
from ssft_deploy.engines.tensorrt import _import_trt
from ssft_deploy.errors import EngineError

DEFAULT_WORKSPACE = 2 << 30  # bytes


def build_plan(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *, max_rows: int,
               opt_rows: int | None = None, workspace_bytes: int = DEFAULT_WORKSPACE,
               timing_cache: str | os.PathLike | None = None) -> dict:
    """Build ``plan_path`` from ``onnx_path`` with one optimisation profile over the leading
    (batch / N) axis: ``1 .. max_rows``; returns the manifest entry fields of the engine."""
    trt, _ = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # default in TensorRT 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache_path = Path(timing_cache) if timing_cache else None
    blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(blob), False)
    profile = builder.create_optimization_profile()
    opt = opt_rows or max_rows
    for i in range(network.num_inputs):
        t = network.get_input(i)
        profile.set_shape(t.name, *(_rows(t.shape, n) for n in (1, opt, max_rows)))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    plan_path = Path(plan_path)
    tmp = plan_path.with_suffix(plan_path.suffix + ".tmp")
    tmp.write_bytes(bytes(plan))
    os.replace(tmp, plan_path)
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    here = current_trt_platform()
    return {"file": plan_path.name, "sha256": sha256_file(plan_path), "format": "tensorrt",
            "gpu": here.gpu, "compute_capability": here.compute_capability,
            "tensorrt": here.tensorrt, "source": Path(onnx_path).name,
            "max_rows": int(max_rows)}


def _rows(dims, n: int) -> list[int]:
    """The input shape with its dynamic (-1) dims set to ``n``."""
    return [n if int(d) == -1 else int(d) for d in dims]


def _max_rows(graph: str, max_batch: int, max_n: int) -> int:
    return max_n if graph == "transfer" else max_batch


def add_trt_variant(bundle_dir: str | os.PathLike, precision: str = "fp16", *,
                    max_batch: int = 32, max_n: int = 4096,
                    workspace_bytes: int = DEFAULT_WORKSPACE) -> dict:
    """Build ``trt-<precision>`` engines for every graph of variant ``precision`` and record
    them (GPU, compute capability, TensorRT version, source graph) in the manifest."""
    b = load_bundle(bundle_dir)
    entries = {}
    for graph in b.variants.get(precision, {}):
        src = b.file(graph, precision)
        entries[graph] = build_plan(src, b.root / f"{graph}.{precision}.plan",
                                    max_rows=_max_rows(graph, max_batch, max_n),
                                    workspace_bytes=workspace_bytes,
                                    timing_cache=b.root / "timing.cache")
    if not entries:
        raise EngineError(f"bundle {b.root} has no {precision!r} graphs to build engines from")
    manifest = json.loads(json.dumps(b.manifest))
    manifest["variants"][f"trt-{precision}"] = entries
    manifest.setdefault("versions", {})["tensorrt"] = current_trt_platform().tensorrt
    write_manifest(b.root, manifest)
    return manifest


def rebuilt_plan(bundle: Bundle, graph: str, precision: str, *, max_batch: int = 32,
                 max_n: int = 4096) -> Path:
    """A plan for this machine built from the ONNX graph of ``precision`` (or the engine's
    recorded ``source``), cached under ``$SSFT_CACHE`` (default ``~/.cache/ssft_deploy``)."""
    src = bundle.file(graph, precision)  # hash-checked ONNX graph
    here = current_trt_platform()
    if here.tensorrt is None or here.gpu is None:
        raise EngineError("rebuilding a TensorRT engine needs tensorrt and a CUDA GPU here")
    cache = Path(os.environ.get("SSFT_CACHE", Path.home() / ".cache" / "ssft_deploy")) / "trt"
    cache.mkdir(parents=True, exist_ok=True)
    key = f"{sha256_file(src)[:16]}-{here.compute_capability}-{here.tensorrt}-{precision}"
    plan = cache / f"{graph}-{key}.plan"
    if not plan.is_file():
        build_plan(src, plan, max_rows=_max_rows(graph, max_batch, max_n),
                   timing_cache=cache / "timing.cache")
    return plan
