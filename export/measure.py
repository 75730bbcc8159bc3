"""Time ONNX graphs under ONNX Runtime CPU, interleaved so a busy machine hurts them alike.

``python -m export.measure A.onnx B.onnx ... --batch 32 --rounds 7 --threads 2`` prints JSON:
per graph the median and best latency in ms over ``rounds`` rounds of ``runs`` calls each.
Extractor graphs get random images, the transfer graph random z / idx / w with N = ``--n``.
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
import onnxruntime as ort


def feeds_for(session: ort.InferenceSession, batch: int, n: int, seed: int = 0) -> dict:
    """Random inputs that fit the graph's inputs (dynamic leading dims: batch or n)."""
    rng = np.random.default_rng(seed)
    names = [i.name for i in session.get_inputs()]
    feeds = {}
    for inp in session.get_inputs():
        rows = batch if "images" in names else n
        shape = [rows] + [int(d) for d in inp.shape[1:]]
        if inp.type == "tensor(int64)":
            feeds[inp.name] = rng.integers(0, rows, shape).astype(np.int64)
        else:
            feeds[inp.name] = rng.random(shape, dtype=np.float32) if inp.name == "w" else \
                rng.standard_normal(shape).astype(np.float32)
    return feeds


def time_graphs(paths: list[str], batch: int = 32, n: int = 1000, rounds: int = 7,
                runs: int = 3, threads: int = 2) -> dict[str, dict[str, float]]:
    """Median / best per-call latency (ms) of each graph, measured round-robin."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = {p: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
                for p in paths}
    feeds = {p: feeds_for(s, batch, n) for p, s in sessions.items()}
    for p, s in sessions.items():  # warm-up
        s.run(None, feeds[p])
    samples: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(rounds):
        for p, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, feeds[p])
            samples[p].append((time.perf_counter() - t0) / runs * 1e3)
    return {p: {"median_ms": float(np.median(v)), "best_ms": float(np.min(v))}
            for p, v in samples.items()}


@click.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--batch", default=32, show_default=True, help="Images per extractor call.")
@click.option("--n", "n", default=1000, show_default=True, help="Samples per transfer call.")
@click.option("--rounds", default=7, show_default=True)
@click.option("--runs", default=3, show_default=True, help="Calls per round.")
@click.option("--threads", default=2, show_default=True, help="ORT intra-op threads.")
def main(graphs: tuple[str, ...], batch: int, n: int, rounds: int, runs: int,
         threads: int) -> None:
    """Time GRAPHS under ONNX Runtime CPU (interleaved rounds) and print JSON."""
    res = time_graphs(list(graphs), batch, n, rounds, runs, threads)
    click.echo(json.dumps({"batch": batch, "n": n, "threads": threads, "rounds": rounds,
                           "runs": runs, "graphs": res}, indent=2))


if __name__ == "__main__":
    main()
