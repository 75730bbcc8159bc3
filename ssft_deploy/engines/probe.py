"""Time one engine of a bundle in this process: the unit of ``precision="auto"``'s measurement.

``python -m ssft_deploy.engines.probe BUNDLE BACKEND PRECISION [--batch 8] [--seconds 0.4]
[--threads N] [--device ID]`` prints ``{"images_per_s": ...}``. Each candidate is timed in its own process, as
it will run: engines sharing a process disturb each other (one's worker threads still spinning or
waking while the other runs), which reordered near-equal candidates.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

GRAPH = "extractor_rgb"
WARMUP_S = 0.5


def images_per_s(bundle: str, backend: str, precision: str, batch: int, seconds: float,
                 intra_op_threads: int | None = None, warmup_s: float = WARMUP_S,
                 device_id: int = 0) -> float:
    """Images/s of ``GRAPH`` on one engine (GPU ``device_id`` for GPU backends) over ``seconds``
    of calls, after ``warmup_s``."""
    from ssft_deploy.bundle import load_bundle
    from ssft_deploy.engines.registry import open_engine

    b = load_bundle(bundle)
    h, w = b.input_size
    images = np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32)
    eng = open_engine(b, GRAPH, precision, backend, intra_op_threads=intra_op_threads,
                      device_id=device_id)
    try:
        # warm up for a while, not one call: a fresh session's first runs allocate and pack
        # weights, and its threads start (a one-call warm-up read ORT at half its rate)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < warmup_s:
            eng.run({"images": images})
        calls, t0 = 0, time.perf_counter()
        while True:
            eng.run({"images": images})
            calls += 1
            if time.perf_counter() - t0 >= seconds:
                break
        return batch * calls / (time.perf_counter() - t0)
    finally:
        eng.close()


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ssft_deploy.engines.probe")
    p.add_argument("bundle")
    p.add_argument("backend")
    p.add_argument("precision")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=float, default=WARMUP_S)
    p.add_argument("--device", type=int, default=0)
    a = p.parse_args(argv)
    thr = images_per_s(a.bundle, a.backend, a.precision, a.batch, a.seconds, a.threads,
                       a.warmup, a.device)
    print(json.dumps({"images_per_s": thr}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
