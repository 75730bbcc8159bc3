"""``precision="auto"``: the fastest gated (backend, precision) of a bundle on this machine.

Which engine and precision are fastest depends on the CPU (AMX, AVX-512 BF16 / VNNI) as much as on
the engines: the choice is measured, not assumed. Candidates are the bundle's variants that passed
the parity gate and that a backend can run here; each is timed on the RGB extractor in its own
process (``engines.probe``) on the runtime's own device, in short interleaved rounds, and the
throughputs are cached per machine and bundle (CPU model, ISA flags, cores, engine versions, GPU
name and driver, device id, manifest hash in the key) under ``$SSFT_CACHE/autoselect``, so the
measurement runs once. The cache is read as untrusted input (``engines.autoselect_cache``): a
corrupt file is logged, measured again and rewritten. What was picked and why is logged. An explicit backend or precision
restricts the candidates (explicit choices win).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.bundle import Bundle, load_bundle, sha256_file
from ssft_deploy.engines import autoselect_cache
from ssft_deploy.engines.cuda_info import device_info as gpu_info
from ssft_deploy.errors import EngineError

log = logging.getLogger("ssft_deploy.engines.autoselect")

PRECISIONS = ("int8", "bf16", "fp16", "fp32")
#: /proc/cpuinfo flags that decide which precision is fast (in the cache key and benchmark JSON)
ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f",
             "avx_vnni", "avx2", "fma", "f16c")
GRAPH = "extractor_rgb"
# Measure: batch (capped by the runtime's max batch), rounds, seconds per candidate per round.
BATCH, ROUNDS, BUDGET_S, SETTLE_S, WARMUP_S = 8, 3, 0.6, 0.05, 0.5

# measure(bundle, pairs, batch, intra_op_threads, device_id=...) -> {"backend/precision": img/s}
Measure = Callable[..., dict[str, float]]


def cpu_info() -> dict[str, Any]:
    """CPU model, the ISA flags of :data:`ISA_FLAGS` (name -> present) and usable cores."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "isa": {f: f in flags for f in ISA_FLAGS}, "usable_cores": cores}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_key(intra_op_threads: int | None = None, device_id: int = 0) -> dict[str, Any]:
    """What a measured choice depends on besides the bundle (the GPU: name and driver of the
    runtime's device, None without one)."""
    threads = intra_op_threads or os.environ.get("SSFT_ORT_THREADS") or os.environ.get(
        "OMP_NUM_THREADS")
    return {"cpu": cpu_info(), "threads": threads, "device_id": int(device_id),
            "gpu": gpu_info(int(device_id)),
            "versions": {d: _version(d) for d in ("onnxruntime", "onnxruntime-gpu", "openvino",
                                                  "tensorrt")}}


def gate_verdict(bundle: Bundle, variant: str) -> str:
    """``"pass"`` when ``variant`` passed the parity gate for its current files, else why not."""
    return bundle.ungated_reason(variant) or "pass"


def candidates(bundle: Bundle, backend: str = "auto", precision: str = "auto"
               ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``[(backend, precision)]`` that run here and passed the gate, and why others are out."""
    from ssft_deploy.engines.registry import BACKENDS, _usable

    names = list(BACKENDS) if backend == "auto" else [backend]
    precisions = PRECISIONS if precision == "auto" else (precision,)
    if backend != "auto" and backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {['auto', *BACKENDS]}")
    out, skipped = [], {}
    for name in names:
        cls = BACKENDS[name]
        for p in precisions:
            variant = cls.variant(p)
            if not bundle.has(GRAPH, variant):
                continue
            reason = _usable(bundle, GRAPH, cls, p)
            verdict = gate_verdict(bundle, variant)
            if reason is None and verdict != "pass":
                reason = f"variant {variant!r} {verdict}"
            if reason is None:
                out.append((name, p))
            else:
                skipped[f"{name}/{p}"] = reason
    return out, skipped


def measure_throughput(bundle: Bundle, pairs: list[tuple[str, str]], batch: int = BATCH,
                       intra_op_threads: int | None = None, *,
                       device_id: int = 0) -> dict[str, float]:
    """Images/s of the RGB extractor per ``backend/precision``, each candidate in its own process
    (``engines.probe``) as it will run (on GPU ``device_id`` for GPU backends), in interleaved
    rounds after a settle pause; the mean over rounds."""
    import subprocess
    import sys

    from ssft_deploy.engines.probe import images_per_s

    names = [f"{b}/{p}" for b, p in pairs]
    got: dict[str, list[float]] = {n: [] for n in names}
    jobs = list(zip(pairs, names))
    for r in range(ROUNDS):
        shift = r % len(jobs)  # each round starts with the next candidate
        for (b, p), name in jobs[shift:] + jobs[:shift]:
            time.sleep(SETTLE_S)
            if not sys.executable:  # an embedding host without a Python executable to spawn
                got[name].append(images_per_s(str(bundle.root), b, p, batch, BUDGET_S,
                                              intra_op_threads, WARMUP_S, device_id))
                continue
            cmd = [sys.executable, "-m", "ssft_deploy.engines.probe", str(bundle.root), b, p,
                   "--batch", str(batch), "--seconds", str(BUDGET_S), "--warmup", str(WARMUP_S),
                   "--device", str(device_id)]
            if intra_op_threads is not None:
                cmd += ["--threads", str(intra_op_threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                tail = (res.stderr.strip().splitlines() or ["no output"])[-1][-400:]
                raise EngineError(f"timing {name} for precision='auto' failed: {tail}")
            got[name].append(float(json.loads(res.stdout.strip().splitlines()[-1])
                                   ["images_per_s"]))
    return {n: float(np.mean(v)) for n, v in got.items()}


@dataclass
class Choice:
    """The picked ``backend`` / ``precision``, every candidate's images/s, and why."""

    backend: str
    precision: str
    throughput: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    cached: bool = False


def choose(bundle: Bundle | str | os.PathLike, backend: str = "auto", precision: str = "auto",
           *, batch: int = BATCH, intra_op_threads: int | None = None, device_id: int = 0,
           measure: Measure = measure_throughput, use_cache: bool = True) -> Choice:
    """The fastest gated (backend, precision) here, for GPU ``device_id``; see the module
    docstring."""
    b = load_bundle(bundle)
    pairs, skipped = candidates(b, backend, precision)
    why_not = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "none"
    if not pairs:
        raise EngineError(f"no gated variant of {b.root} runs here with backend={backend!r}, "
                          f"precision={precision!r} ({why_not}); re-run the parity gate "
                          "(ssft-export) or pick an explicit precision")
    if len(pairs) == 1:
        choice = Choice(*pairs[0], reason="the only gated candidate")
    else:
        key = {"bundle": sha256_file(b.root / "manifest.json"),
               "pairs": [list(bp) for bp in pairs], "batch": batch,
               "machine": machine_key(intra_op_threads, device_id)}
        path = autoselect_cache.cache_path(key)
        names = {f"{x}/{y}" for x, y in pairs}
        thr, corrupt = autoselect_cache.read(path, key, names) if use_cache else (None, None)
        if corrupt:
            log.warning("auto-selection cache %s is corrupt (%s): re-measuring and rewriting it",
                        path, corrupt)
        cached = thr is not None
        if thr is None:
            thr, cached = measure(b, pairs, batch, intra_op_threads, device_id=device_id), False
            bad = autoselect_cache.invalid(thr, names)
            if bad:  # never cached, never the reason for a pick
                raise EngineError(f"timing for precision='auto' gave no valid images/s ({bad}); "
                                  "pick an explicit precision")
            if use_cache:
                autoselect_cache.write(path, key, thr)
        best = max(pairs, key=lambda bp: thr[f"{bp[0]}/{bp[1]}"])
        ranked = ", ".join(f"{n} {v:.1f}" for n, v in sorted(thr.items(), key=lambda kv: -kv[1]))
        choice = Choice(*best, throughput=thr, cached=cached,
                        reason=f"fastest gated candidate at batch {batch} (images/s: {ranked}; "
                               f"{'cached' if cached else 'measured now'} for "
                               f"{cpu_info()['model']})")
    log.info("auto-selected backend %s, precision %s: %s (not candidates: %s)", choice.backend,
             choice.precision, choice.reason, why_not)
    return choice
