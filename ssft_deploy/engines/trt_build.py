"""Building TensorRT engines from a bundle's ONNX graphs (TensorRT 10 / 11, strongly typed).

Precision lives in the graph (fp16 graphs carry their casts; int8 graphs their Q/DQ nodes), so
the network is built strongly typed and no precision builder flag is set (TensorRT 11 removed
them). The one builder of ``trt-<variant>`` engines: used by the export (``ssft-export --trt``
through ``build_variants``), by ``add_trt_variant`` on an existing bundle, and by
``open_engine(..., rebuild=True)`` when a bundle's engine was built for another GPU or TensorRT
version. Needs tensorrt and a GPU.

Optimisation profiles (one per engine, over the leading axis) are sized from the protocols: the
transfer engine must take one all-queries call (queries + gallery) of every evaluation protocol,
so its max is the largest of ``PROTOCOL_ROWS`` and its ``opt`` (the shape TensorRT tunes kernels
for) the common one, SYSU-MM01 all-search single-shot; extractors are tuned for the runtime's
default batch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ssft_deploy.bundle import (
    Bundle,
    current_trt_platform,
    load_bundle,
    sha256_file,
    write_manifest,
)
from ssft_deploy.engines.tensorrt import _import_trt
from ssft_deploy.errors import EngineError
from ssft_deploy.fileio import durable_write

log = logging.getLogger("ssft_deploy.engines")

DEFAULT_WORKSPACE = 2 << 30  # bytes
# Rows of one all-queries transfer call (queries + gallery) per protocol (paper Sec. 4.1).
PROTOCOL_ROWS = {"sysu-all-single-shot": 3803 + 301, "sysu-all-multi-shot": 3803 + 3010,
                 "regdb": 2060 + 2060}
TRANSFER_MAX_ROWS = max(PROTOCOL_ROWS.values())           # 6813: every protocol in one call
TRANSFER_OPT_ROWS = PROTOCOL_ROWS["sysu-all-single-shot"]  # 4104: the common size
EXTRACTOR_MAX_BATCH, EXTRACTOR_OPT_BATCH = 64, 32         # opt: ReIDRuntime's default batch
ONNX_VARIANTS = ("fp32", "fp16", "int8")
TIMING_CACHE = "timing.cache"


def profile_rows(graph: str, max_batch: int = EXTRACTOR_MAX_BATCH,
                 max_n: int = TRANSFER_MAX_ROWS) -> tuple[int, int]:
    """``(opt, max)`` rows of ``graph``'s profile: ``max_n`` for the transfer graph, ``max_batch``
    for an extractor; ``opt`` is the common size, clipped to the max."""
    if graph == "transfer":
        return min(TRANSFER_OPT_ROWS, max_n), max_n
    return min(EXTRACTOR_OPT_BATCH, max_batch), max_batch


def build_plan(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *, max_rows: int,
               opt_rows: int | None = None, workspace_bytes: int = DEFAULT_WORKSPACE,
               timing_cache: str | os.PathLike | None = None) -> dict:
    """Build ``plan_path`` from ``onnx_path`` with one optimisation profile over the leading
    (batch / N) axis, ``1 .. opt_rows .. max_rows``; returns the manifest entry of the engine."""
    if not 1 <= (opt_rows or max_rows) <= max_rows:
        raise EngineError(f"profile rows must satisfy 1 <= opt ({opt_rows}) <= max ({max_rows})")
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
    durable_write(plan_path, bytes(plan))
    if cache_path:
        durable_write(cache_path, bytes(config.get_timing_cache().serialize()))
    here = current_trt_platform()
    return {"file": plan_path.name, "sha256": sha256_file(plan_path), "format": "tensorrt",
            "gpu": here.gpu, "compute_capability": here.compute_capability,
            "tensorrt": here.tensorrt, "source": Path(onnx_path).name,
            "max_rows": int(max_rows), "opt_rows": int(opt)}


def _rows(dims, n: int) -> list[int]:
    """The input shape with its dynamic (-1) dims set to ``n``."""
    return [n if int(d) == -1 else int(d) for d in dims]


def build_variants(bundle_dir: str | os.PathLike, variants: dict[str, dict[str, dict]], *,
                   max_batch: int = EXTRACTOR_MAX_BATCH, max_n: int = TRANSFER_MAX_ROWS,
                   workspace_bytes: int = DEFAULT_WORKSPACE, only: Iterable[str] | None = None,
                   say: Callable[[str], None] = log.info) -> dict[str, dict[str, dict]]:
    """``trt-<v>`` manifest variants built from each ONNX variant ``v`` of ``variants`` (the
    manifest's ``variants``; ``only`` restricts which), plans written beside the graphs.

    A graph file shared by two variants (the int8 variant's fp32 transfer graph) is built once;
    a variant with asymmetric u8 activations is skipped (TensorRT cannot read them)."""
    out = Path(bundle_dir)
    built: dict[str, dict[str, Any]] = {}
    result: dict[str, dict[str, dict]] = {}
    for variant in (v for v in ONNX_VARIANTS if v in variants and (only is None or v in only)):
        if any(e.get("activations") == "u8" for e in variants[variant].values()):
            say(f"TensorRT: skipping the {variant} variant (asymmetric u8 activations are not "
                "readable by TensorRT; export with --int8-activations s8)")
            continue
        result[f"trt-{variant}"] = {}
        for graph, entry in variants[variant].items():
            source = entry["file"]
            if source not in built:
                plan = out / (source.removesuffix(".onnx") + ".plan")
                opt, rows = profile_rows(graph, max_batch, max_n)
                say(f"TensorRT: building {plan.name} (profile 1..{opt}..{rows})")
                built[source] = build_plan(out / source, plan, max_rows=rows, opt_rows=opt,
                                           workspace_bytes=workspace_bytes,
                                           timing_cache=out / TIMING_CACHE)
            result[f"trt-{variant}"][graph] = built[source]
    return result


def add_trt_variant(bundle_dir: str | os.PathLike, precision: str = "fp16", *,
                    max_batch: int = EXTRACTOR_MAX_BATCH, max_n: int = TRANSFER_MAX_ROWS,
                    workspace_bytes: int = DEFAULT_WORKSPACE) -> dict:
    """Build ``trt-<precision>`` engines for every graph of variant ``precision`` of an existing
    bundle and record them (GPU, compute capability, TensorRT version, source) in its manifest."""
    b = load_bundle(bundle_dir)
    for graph in b.variants.get(precision, {}):
        b.file(graph, precision)  # hash-check every source graph before building
    built = build_variants(b.root, b.manifest["variants"], max_batch=max_batch, max_n=max_n,
                           workspace_bytes=workspace_bytes, only=(precision,))
    if not built.get(f"trt-{precision}"):
        raise EngineError(f"bundle {b.root} has no {precision!r} graphs TensorRT can build from")
    manifest = json.loads(json.dumps(b.manifest))
    manifest["variants"].update(built)
    manifest.setdefault("versions", {})["tensorrt"] = current_trt_platform().tensorrt
    write_manifest(b.root, manifest)
    return manifest


def rebuilt_plan(bundle: Bundle, graph: str, precision: str, *,
                 max_batch: int = EXTRACTOR_MAX_BATCH, max_n: int = TRANSFER_MAX_ROWS) -> Path:
    """A plan for this machine built from the ONNX graph of ``precision`` (or the engine's
    recorded ``source``), cached under ``$SSFT_CACHE`` (default ``~/.cache/ssft_deploy``)."""
    src = bundle.file(graph, precision)  # hash-checked ONNX graph
    here = current_trt_platform()
    if here.tensorrt is None or here.gpu is None:
        raise EngineError("rebuilding a TensorRT engine needs tensorrt and a CUDA GPU here")
    cache = Path(os.environ.get("SSFT_CACHE", Path.home() / ".cache" / "ssft_deploy")) / "trt"
    cache.mkdir(parents=True, exist_ok=True)
    opt, rows = profile_rows(graph, max_batch, max_n)
    key = f"{sha256_file(src)[:16]}-{here.compute_capability}-{here.tensorrt}-{precision}-{rows}"
    plan = cache / f"{graph}-{key}.plan"
    if not plan.is_file():
        build_plan(src, plan, max_rows=rows, opt_rows=opt, timing_cache=cache / TIMING_CACHE)
    return plan
