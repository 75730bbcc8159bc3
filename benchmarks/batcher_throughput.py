"""FrameBatcher throughput with many camera threads vs the bare extractor at the same batch size.

    python benchmarks/batcher_throughput.py --bundle runs/demo/bundle [--batch 32 --threads 16]
    python benchmarks/batcher_throughput.py --synthetic            # stand-in engine, fixed cost

Each repetition times the bare engine (back-to-back calls on a ready batch of ``--batch``) and the
batcher (``--threads`` threads submitting ready ``[3,H,W]`` crops for ``--duration`` seconds, the
batcher cutting batches of up to ``--batch``), alternating which goes first, so machine load hits
both alike. The ratio of median throughputs is the batcher's efficiency (target >= 0.90).
Preprocessing is left out of both sides: this measures what batching costs.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/batcher_throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchError, check_target, format_table, header, write_json
from ssft_deploy.batcher import FrameBatcher
from ssft_deploy.errors import SSFTError

ExtractFn = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]
TARGET = 0.90


class SyntheticEngine:
    """A stand-in extractor of fixed cost: ``base_ms + per_image_ms * B``, spent outside the GIL
    (like an ONNX Runtime / TensorRT call), returning projections of the channel means."""

    def __init__(self, base_ms: float = 4.0, per_image_ms: float = 0.5, dims: int = 64):
        self.base_s, self.per_image_s = base_ms / 1e3, per_image_ms / 1e3
        self.proj = np.random.default_rng(0).standard_normal((3, dims)).astype(np.float32)

    def __call__(self, x: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.base_s + self.per_image_s * len(x))
        f = x.mean(axis=(2, 3)) @ self.proj
        return f, -f


def bare_throughput(extract: ExtractFn, batch: np.ndarray, duration: float) -> dict:
    """Back-to-back engine calls on one ready batch: images per second."""
    n, t0 = 0, time.perf_counter()
    while True:
        extract(batch, "rgb")
        n += len(batch)
        elapsed = time.perf_counter() - t0
        if elapsed >= duration:
            return {"images": n, "seconds": elapsed, "images_per_s": n / elapsed}


def batcher_throughput(extract: ExtractFn, crops: np.ndarray, batch: int, threads: int,
                       duration: float, max_wait_ms: float) -> dict:
    """``threads`` camera threads submit crops for ``duration`` s; images completed per second."""
    batcher = FrameBatcher(extract, max_batch=batch, max_wait_ms=max_wait_ms,
                           max_queue=4 * batch, full_policy="block", block_timeout_s=60)
    futures: list[list] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def camera(cam: int) -> None:
        mine = futures[cam]
        start.wait()
        end = time.perf_counter() + duration
        i = cam
        while time.perf_counter() < end:
            mine.append(batcher.submit(crops[i % len(crops)], camera_id=cam, modality="rgb"))
            i += threads

    workers = [threading.Thread(target=camera, args=(c,)) for c in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    batcher.close(drain=True)
    elapsed = time.perf_counter() - t0
    done = [f for fs in futures for f in fs]
    failed = sum(f.exception() is not None for f in done)
    if failed:
        raise BenchError(f"{failed} of {len(done)} crops failed in the batcher: "
                         f"{next(f.exception() for f in done if f.exception())}")
    st = batcher.stats()
    return {"images": len(done), "seconds": elapsed, "images_per_s": len(done) / elapsed,
            "mean_batch": st["mean_batch"], "batch_sizes": st["batch_sizes"],
            "latency_ms": st["latency_ms"], "max_queue_depth": st["max_queue_depth"]["rgb"]}


def open_extract(bundle: Path | None, synthetic: bool, precision: str, backend: str,
                 size: tuple[int, int]) -> tuple[ExtractFn, tuple[int, int], str, Callable]:
    """(extract_fn, input size (h, w), description, close) for the bundle or the stand-in."""
    if synthetic:
        eng = SyntheticEngine()
        what = f"synthetic engine ({eng.base_s * 1e3:g} ms + {eng.per_image_s * 1e3:g} ms/image)"
        return eng, size, what, lambda: None
    from benchmarks.common import require_bundle
    from ssft_deploy.runtime import ReIDRuntime

    require_bundle(bundle)
    rt = ReIDRuntime.open(bundle, precision=precision, backend=backend)
    name = rt.extractors[0].name
    return rt.extract_array, tuple(rt.bundle.input_size), f"{bundle} {precision} on {name}", \
        rt.close


@click.command()
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="model bundle (through ReIDRuntime); default: --synthetic")
@click.option("--synthetic", is_flag=True, help="stand-in engine of fixed cost (no bundle needed)")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--backend", default="auto", show_default=True)
@click.option("--batch", default=32, show_default=True, help="max_batch and the bare batch size")
@click.option("--threads", default=16, show_default=True, help="submitting camera threads")
@click.option("--reps", default=3, show_default=True, help="interleaved repetitions")
@click.option("--duration", default=2.0, show_default=True, help="seconds per timed run")
@click.option("--max-wait-ms", default=5.0, show_default=True)
@click.option("--synthetic-size", default="64x32", show_default=True,
              help="stand-in input h x w")
@click.option("--out", type=click.Path(path_type=Path),
              default=Path("runs/bench/batcher_throughput.json"), show_default=True)
def main(bundle: Path | None, synthetic: bool, precision: str, backend: str, batch: int,
         threads: int, reps: int, duration: float, max_wait_ms: float, synthetic_size: str,
         out: Path) -> None:
    """Batcher throughput with THREADS submitting threads vs the bare engine, side by side."""
    if bundle is None and not synthetic:
        synthetic = True
    if bundle is not None and synthetic:
        raise BenchError("give --bundle or --synthetic, not both")
    try:
        size = tuple(int(v) for v in synthetic_size.lower().split("x"))
    except ValueError:
        raise BenchError(f"--synthetic-size must look like 64x32, got {synthetic_size}") from None
    try:
        extract, (h, w), what, close = open_extract(bundle, synthetic, precision, backend, size)
    except SSFTError as exc:
        raise BenchError(str(exc)) from None
    rng = np.random.default_rng(0)
    crops = rng.standard_normal((max(batch, threads) * 2, 3, h, w)).astype(np.float32)
    ready = np.ascontiguousarray(crops[:batch])
    try:
        extract(ready, "rgb")                       # warm-up (allocations, lazy init)
        bare, batched = [], []
        for rep in range(reps):
            order = ("bare", "batcher") if rep % 2 == 0 else ("batcher", "bare")
            for kind in order:
                if kind == "bare":
                    bare.append(bare_throughput(extract, ready, duration))
                else:
                    batched.append(batcher_throughput(extract, crops, batch, threads, duration,
                                                      max_wait_ms))
            click.echo(f"rep {rep + 1}/{reps}: bare {bare[-1]['images_per_s']:.1f} img/s, "
                       f"batcher {batched[-1]['images_per_s']:.1f} img/s", err=True)
    finally:
        close()
    med_bare = statistics.median(r["images_per_s"] for r in bare)
    med_batch = statistics.median(r["images_per_s"] for r in batched)
    ratio = med_batch / med_bare
    target = check_target("batcher / bare throughput", ratio, TARGET)
    result = {**header("batcher_throughput"), "engine": what, "batch": batch,
              "threads": threads, "reps": reps, "duration_s": duration,
              "max_wait_ms": max_wait_ms, "input_size": [h, w],
              "bare": bare, "batcher": batched,
              "median_images_per_s": {"bare": med_bare, "batcher": med_batch},
              "ratio": ratio, "targets": [target]}
    write_json(out, result)
    click.echo(f"engine: {what}; batch {batch}, {threads} submitting threads, {reps} reps x "
               f"{duration:g} s")
    click.echo(format_table(
        ["run", "bare img/s", "batcher img/s", "mean batch", "p50 ms", "p99 ms"],
        [[i + 1, a["images_per_s"], b["images_per_s"], b["mean_batch"], b["latency_ms"]["p50"],
          b["latency_ms"]["p99"]] for i, (a, b) in enumerate(zip(bare, batched))]))
    click.echo(f"ratio batcher/bare = {ratio:.3f} (target >= {TARGET}: {target['note']}); "
               f"wrote {out}")


if __name__ == "__main__":
    main()
