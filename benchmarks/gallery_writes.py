"""The local store's write path at scale: add throughput and the first search after an add
(issue 20), old code against new side by side.

    python benchmarks/gallery_scale.py --writes --sizes 10000,100000 --baseline /tmp/old
    python benchmarks/gallery_writes.py --point 100000 --root /tmp/old   # one point, one process

Each point runs in its own process with ``ROOT`` (a checkout of the code to measure) first on
the path: it bulk-loads ``n`` synthetic entries (one add), opens a second handle on the file (a
reader, as another process would), runs one two-stage search (builds the faiss indexes), then
times ``batches`` adds of ``batch`` entries each, the first search after each add, a second
search, the reader's pick-up of the add (its ``len``) and one remove + the search after it.
The points of the two checkouts alternate (new first at one size, old first at the next); a
point stopped for time (``kill`` its process) keeps the rounds it finished, marked incomplete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
M, TOP, K = 100, 10, 4
TIMINGS = ("add_s", "search_after_add_s", "second_search_s", "reader_sync_s")


def _data(n: int, ds: int, dp: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shared, specific, pids) of n RGB entries of n/10 identities, noise 0.8 (float32)."""
    rng = np.random.default_rng(seed)
    ids = max(1, n // 10)
    cs = rng.standard_normal((ids, ds), np.float32)
    cp = rng.standard_normal((ids, dp), np.float32)
    pids = np.arange(n) % ids
    sh = cs[pids] + 0.8 * rng.standard_normal((n, ds), np.float32)
    sp = cp[pids] + 0.8 * rng.standard_normal((n, dp), np.float32)
    return sh, sp, pids


def point(n: int, ds: int, dp: int, batch: int, batches: int, seed: int = 0,
          partial: Path | None = None, searches: bool = True) -> dict:
    """One store at one size in this process (``ssft_deploy`` from whatever is first on the
    path); the figures so far are written to ``partial`` after each step (a point stopped for
    time still reports its first rounds). ``searches=False``: the write path alone (no search,
    so no index is built: for a size whose searches take longer than there is time)."""
    import ssft_deploy
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import open_gallery
    from ssft_deploy.transfer import SSTN, propagate

    rng = np.random.default_rng(seed + 7)
    d = 2 * dp + ds
    w_t = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    sstn = SSTN(lambda z, idx, w: propagate(z, idx, w) @ w_t, k=K)
    q = Features(rng.standard_normal((8, ds), np.float32),
                 rng.standard_normal((8, dp), np.float32), 1)
    total = n + batch * batches
    sh, sp, pids = _data(total, ds, dp, seed)
    cams = rng.choice([1, 2, 4, 5], total)
    tmp = Path(tempfile.mkdtemp(prefix="ssft-gallery-writes-",
                                dir=None if partial is None else Path(partial).parent))
    path = tmp / "g.gallery"

    def search(i: int) -> float | None:
        if not searches:
            return None
        t0 = time.perf_counter()
        g.search(q.take([i % len(q)]), top=TOP, transfer=sstn, mode="single-query", shortlist=M)
        return time.perf_counter() - t0

    g = open_gallery(path, (ds, dp))
    t0 = time.perf_counter()
    g.add(Features(sh[:n], sp[:n], 0), pids=pids[:n], camids=cams[:n], entry_ids=np.arange(n))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader = open_gallery(path, (ds, dp))
    open_s = time.perf_counter() - t0
    len(g)  # the writer sees the file as the reader left it (the old code rewrote it on open)
    first_search_s = search(0)
    rows, loads = [], []
    out = {"n": n, "dims": [ds, dp], "batch": batch, "batches": batches,
           "code": str(Path(ssft_deploy.__file__).resolve().parents[1]), "load_s": load_s,
           "open_s": open_s, "first_search_s": first_search_s, "rounds": rows}

    def save(**more) -> None:
        out.update(more, loadavg=os.getloadavg())
        if rows:
            med = {k: float(np.median([r[k] for r in rows])) for k in TIMINGS
                   if rows[0][k] is not None}
            out.update({f"median_{k}": v for k, v in med.items()},
                       add_entries_per_s=batch / med["add_s"], loadavg_during=[min(loads),
                                                                                max(loads)])
        if partial is not None:
            Path(partial).write_text(json.dumps(out))

    save()
    for b in range(batches):
        s = slice(n + b * batch, n + (b + 1) * batch)
        t0 = time.perf_counter()
        g.add(Features(sh[s], sp[s], 0), pids=pids[s], camids=cams[s],
              entry_ids=np.arange(s.start, s.stop))
        step = {"add_s": time.perf_counter() - t0}
        save(step=step)  # a point stopped for time keeps each step it finished
        step["search_after_add_s"] = search(2 * b + 1)
        save(step=step)
        step["second_search_s"] = search(2 * b + 2)
        t0 = time.perf_counter()
        step["reader_len"] = len(reader)
        step["reader_sync_s"] = time.perf_counter() - t0
        rows.append(step)
        loads.append(os.getloadavg()[0])
        save(step=None)
    t0 = time.perf_counter()
    g.remove(entry_ids=[n // 2])
    remove_s = time.perf_counter() - t0
    search_after_remove_s = search(5)
    assert len(g) == total - 1 and len(reader) == total - 1
    size = path.stat().st_size
    g.close()
    reader.close()
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    tmp.rmdir()
    save(remove_s=remove_s, search_after_remove_s=search_after_remove_s, file_mib=size / 2**20)
    return out


def run(sizes: list[int], ds: int, dp: int, batch: int, batches: int, baseline: Path | None,
        echo=print, on_row=None) -> list[dict]:
    """Every (size, checkout) point in its own process; old and new alternate in order (new
    first at the first size). A point that fails or is stopped (``kill`` it to move on) keeps
    the rounds it finished, marked ``incomplete``. ``on_row(rows)`` after each point."""
    roots = [("new", ROOT)] + ([("old", Path(baseline).resolve())] if baseline else [])
    out: list[dict] = []
    for i, n in enumerate(sizes):
        for label, root in (roots[::-1] if i % 2 else roots):
            partial = Path(tempfile.mkdtemp(prefix="ssft-writes-point-")) / "partial.json"
            cmd = [sys.executable, __file__, "--point", str(n), "--root", str(root),
                   "--dims", f"{ds},{dp}", "--batch", str(batch), "--batches", str(batches),
                   "--partial", str(partial)]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # ROOT decides
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                row = {"code_label": label, "n": n, "incomplete": True,
                       "error": proc.stderr[-2000:] or f"exit {proc.returncode}"}
                if partial.exists():
                    row = {**json.loads(partial.read_text()), **row}
                echo(f"{label} n={n}: stopped (exit {proc.returncode}): {proc.stderr[-300:]}")
            else:
                row = {"code_label": label, **json.loads(proc.stdout.strip().splitlines()[-1])}
            shutil.rmtree(partial.parent, ignore_errors=True)  # a stopped point's gallery too
            out.append(row)
            if on_row is not None:
                on_row(out)
            if "add_entries_per_s" not in row:
                continue
            echo(f"{label:3s} n={n:>8d}  add {row['add_entries_per_s']:9.0f} entries/s  "
                 f"first search after add {row['median_search_after_add_s']:.3f} s  "
                 f"(second {row['median_second_search_s']:.3f} s)  open {row['open_s']:.2f} s  "
                 f"reader sync {row['median_reader_sync_s']:.3f} s  "
                 f"rounds {len(row['rounds'])}  load {row['loadavg'][0]:.1f}")
    return out


def ratios(rows: list[dict]) -> list[dict]:
    """new / old per size (add throughput; old / new for latencies)."""
    by = {(r["code_label"], r["n"]): r for r in rows if "add_entries_per_s" in r}
    out = []
    for n in sorted({n for _, n in by}):
        old, new = by.get(("old", n)), by.get(("new", n))
        if old and new:
            out.append({"n": n, "add_throughput_new_over_old":
                        new["add_entries_per_s"] / old["add_entries_per_s"],
                        "search_after_add_old_over_new": old["median_search_after_add_s"] /
                        new["median_search_after_add_s"],
                        "open_old_over_new": old["open_s"] / new["open_s"],
                        "rounds": [len(old["rounds"]), len(new["rounds"])]})
    return out


def _main(argv: list[str]) -> None:
    args = dict(zip(argv[::2], argv[1::2]))
    sys.path.insert(0, args.get("--root", str(ROOT)))
    ds, dp = (int(v) for v in args.get("--dims", "256,256").split(","))
    print(json.dumps(point(int(args["--point"]), ds, dp, int(args.get("--batch", 1000)),
                           int(args.get("--batches", 3)), partial=args.get("--partial"),
                           searches=args.get("--searches", "yes") == "yes")))


if __name__ == "__main__":
    _main(sys.argv[1:])
