"""One process per variant, interleaved rounds, and the machine's load measured around each slice.

A busy machine must not decide a comparison: every variant runs in its own process (see
``benchmarks.backends``), the order rotates from round to round, the process sleeps before each
slice so the previous variant's threads stop spinning, and each slice records the load average
before and after plus the CPU time *other* processes used during it (all CPUs' busy time from
/proc/stat minus the worker's own CPU time). A slice where others used more than
``LOAD_FLAG_CORES`` cores is flagged; a round with a flagged slice is flagged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOAD_FLAG_CORES = 0.25
SETTLE_S = 0.2
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (/proc/stat), None where unreadable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _HZ


def load_avg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


class Worker:
    """A ``benchmarks.backends`` process serving one variant; ``ok`` / ``reason`` / ``actual``."""

    def __init__(self, name: str, spec: dict[str, Any], threads: int | None = None,
                 module: str = "benchmarks.backends") -> None:
        self.name, self.spec = name, spec
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if threads:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(spec)], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)
        hello = self._read()
        self.ok = bool(hello.get("ok"))
        self.reason = hello.get("reason", "")
        self.actual = hello.get("actual", "")
        if not self.ok:
            self.close()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(timeout=30)
            self._err.seek(0)
            tail = self._err.read()[-800:].strip()
            return {"ok": False, "reason": f"worker exited ({self.proc.returncode}): {tail}"}
        return json.loads(line)

    def time(self, batch: int, budget_s: float, warmup: int, min_calls: int = 1
             ) -> dict[str, Any]:
        """One timed slice with its load record; raises RuntimeError if the worker died."""
        cmd = {"op": "time", "batch": batch, "budget_s": budget_s, "warmup": warmup,
               "min_calls": min_calls}
        load0, busy0, t0 = load_avg(), busy_seconds(), time.perf_counter()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        res = self._read()
        wall, busy1 = time.perf_counter() - t0, busy_seconds()
        if "samples" not in res:
            raise RuntimeError(f"{self.name}: {res.get('reason', res)}")
        others = None
        if busy0 is not None and busy1 is not None and wall > 0:
            others = max(0.0, (busy1 - busy0 - res["cpu_s"]) / wall)
        res.update(load_before=load0, load_after=load_avg(), wall_s=wall,
                   others_cores=None if others is None else round(others, 3),
                   under_load=others is not None and others > LOAD_FLAG_CORES)
        return res

    def outputs(self, batch: int) -> dict[str, Any] | None:
        """The variant's outputs on the benchmark's images of ``batch`` (None for the probe)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "outputs", "batch": batch}) + "\n")
        self.proc.stdin.flush()
        res = self._read()
        out = res.get("outputs")
        return out if isinstance(out, dict) else None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._err.close()


def start_workers(specs: dict[str, dict[str, Any]], threads: int | None = None,
                  module: str = "benchmarks.backends"
                  ) -> tuple[dict[str, Worker], list[dict[str, str]]]:
    """Start one worker per spec (one at a time, so their start-ups do not compete); returns
    the running ones and ``[{"name", "reason"}]`` for those that could not open their variant."""
    running, skipped = {}, []
    for name, spec in specs.items():
        w = Worker(name, spec, threads, module)
        if w.ok:
            running[name] = w
        else:
            skipped.append({"name": name, "reason": w.reason})
    return running, skipped


def interleaved_rounds(workers: dict[str, Worker], batch: int, rounds: int, warmup: int,
                       budget_s: float, slice_warmup: int = 0, progress=None
                       ) -> tuple[dict[str, list[dict]], list[dict]]:
    """Rounds over all workers in rotating order; returns slices per worker and a record per
    round (load before / after, flagged when any slice in it ran under load)."""
    names = list(workers)
    for n in names:  # warm-up, not recorded
        workers[n].time(batch, 0.0, warmup, min_calls=0)
    slices: dict[str, list[dict]] = {n: [] for n in names}
    records = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        rec = {"round": r, "batch": batch, "order": order, "load_before": load_avg()}
        for n in order:
            time.sleep(SETTLE_S)
            s = workers[n].time(batch, budget_s, slice_warmup)
            s["round"] = r
            slices[n].append(s)
            if progress is not None:
                progress(n)
        rec["load_after"] = load_avg()
        rec["others_cores_max"] = max((slices[n][-1]["others_cores"] or 0.0) for n in names)
        rec["under_load"] = any(slices[n][-1]["under_load"] for n in names)
        records.append(rec)
    return slices, records
