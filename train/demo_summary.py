"""The short summary `make demo` ends with: accuracy, parity per variant, throughput per backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _accuracy(ev: dict[str, Any]) -> dict[str, dict[str, float]]:
    settings = ev.get("settings", {})
    return {name: {m: round(s[m]["mean"], 2) for m in ("rank1", "mAP", "mINP") if m in s}
            for name, s in settings.items()}


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "accuracy_demo.json"


def band(torch_eval: dict[str, dict[str, float]], config: str | Path | None,
         results: Path = RESULTS) -> dict[str, Any]:
    """The band this run should fall in: mean +- 2 std over seeds of ``benchmarks/accuracy.py``
    for the same config (empty when there is no sweep of that config); prints it."""
    sweep = _read(results)
    if not sweep or config is None:
        return {}
    from train.config import load

    try:
        same = {k: v for k, v in load(config).to_dict().items() if k not in ("seed", "extra")} \
            == {k: v for k, v in sweep["config"].items() if k not in ("seed", "extra")}
    except Exception:  # noqa: BLE001 - a config the demo could not use has no band
        same = False
    if not same:
        print(f"(no accuracy band: {results.name} was measured with another config)")
        return {}
    n = len(sweep["seeds"])
    print(f"expected band (benchmarks/accuracy.py, {n} seeds on {sweep['machine']['cpu']}: "
          f"mean +- 2 std over seeds) and this run:")
    out = {}
    for name, row in torch_eval.items():
        ref = sweep["summary"].get(name)
        if not ref:
            continue
        cells = []
        for m in ("rank1", "mAP"):
            lo = ref[m]["mean"] - 2 * ref[m]["std"]
            hi = ref[m]["mean"] + 2 * ref[m]["std"]
            inside = lo <= row.get(m, float("nan")) <= hi
            out[f"{name}/{m}"] = {"low": round(lo, 2), "high": round(hi, 2), "inside": inside}
            cells.append(f"{m} {lo:6.2f} .. {hi:6.2f}: {row.get(m, float('nan')):6.2f} "
                         f"{'inside' if inside else 'OUTSIDE'}")
        print(f"  {name:<14}" + "   ".join(cells))
    return out


PAPER_LATENCY = Path(__file__).resolve().parents[1] / "docs" / "results" / "latency.json"


def paper_size_targets() -> dict[str, bool | None]:
    """The targets of the committed paper-size latency run (docs/results/latency.json)."""
    return _read(PAPER_LATENCY).get("summary", {}).get("targets_met", {})


def training_speed(out: Path) -> dict[str, Any]:
    """Seconds per training step of the run under ``out`` (from its log.json), with the load
    average now (the demo shares its machine with whatever else runs)."""
    import os

    log = _read(out / "log.json")
    steps, seconds = len(log.get("steps", [])), sum(e["seconds"] for e in log.get("epochs", []))
    return {"steps": steps, "train_seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / steps, 3) if steps else None,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def summarize(out: Path, config: str | Path | None = None,
              step_seconds: dict[str, float] | None = None,
              step_cpu_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """Collect the demo's JSON outputs under ``out``, print the summary and return it;
    ``step_seconds`` / ``step_cpu_seconds``: wall and CPU time of each demo step run now
    (skipped steps absent)."""
    torch_eval = _accuracy(_read(out / "eval.json"))
    runtime_eval = _accuracy(_read(out / "eval_runtime.json"))
    manifest = _read(out / "bundle" / "manifest.json")
    parity = {name: {**r.get("figures", {}), "verdict": r.get("verdict")}  # export.gate records
              for name, r in manifest.get("gate", {}).get("variants", {}).items()}
    bench = _read(out / "bench" / "latency.json").get("summary", {})
    video = _read(out / "video" / "matches.json")

    print("\n== summary")
    print("accuracy, SYSU-MM01 protocol on synthetic data (all-search, single-shot, mean of trials):")
    print(f"  {'setting':<14}{'torch R1':>10}{'torch mAP':>11}{'runtime R1':>12}{'runtime mAP':>13}")
    for name, row in torch_eval.items():
        rt = runtime_eval.get(name, {})
        print(f"  {name:<14}{row.get('rank1', float('nan')):>10.2f}{row.get('mAP', float('nan')):>11.2f}"
              f"{rt.get('rank1', float('nan')):>12.2f}{rt.get('mAP', float('nan')):>13.2f}")
    expected = band(torch_eval, config)
    print("parity of each exported variant against PyTorch fp32 (held-out synthetic images):")
    for name, r in parity.items():
        print(f"  {name:<8} extractor min cos {r.get('extractor_min_cos') or 0:.6f}  "
              f"neighbour overlap {r.get('neighbour_overlap_mean') or 0:.3f}  "
              f"dRank-1 {r.get('d_rank1') or 0:+.1f}  dmAP {r.get('d_mAP') or 0:+.1f} points  "
              f"{r['verdict']}")
    if bench:
        print(f"throughput at batch {bench.get('reference_batch')} (images/s, this machine):")
        for name, v in sorted(bench.get("throughput", {}).items(), key=lambda kv: -kv[1]):
            print(f"  {name:<16}{v:>10.1f}")
    paper = paper_size_targets()
    if paper:   # the goals are written for the paper-size rows, not for this small model
        print("paper-size benchmark targets (random-weight ResNet-50 rows of "
              f"{PAPER_LATENCY}, another run, not this model): "
              + ", ".join(f"{k}={'met' if v else 'not met' if v is False else 'n/a'}"
                          for k, v in paper.items()))
    if video:
        right = video.get("rank1_correct")
        print(f"video example: {len(video.get('matches', []))} IR tracks matched against "
              f"{len(video.get('gallery_tracks', []))} RGB tracks"
              + (f", {right} correct at rank 1" if right is not None else ""))
    speed = training_speed(out)
    if speed["seconds_per_step"]:
        print(f"training: {speed['steps']} steps, {speed['seconds_per_step']:.3f} s per step "
              f"(load average {speed['load_avg_1m']})")
    if step_seconds:
        print("demo steps, wall s: " + ", ".join(f"{k} {v:.1f}" for k, v in step_seconds.items())
              + f"; total {sum(step_seconds.values()):.1f}")
    if step_cpu_seconds:
        print("demo steps, CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                 step_cpu_seconds.items())
              + f"; total {sum(step_cpu_seconds.values()):.1f}")
    return {"training": speed, "step_seconds": dict(step_seconds or {}),
            "step_cpu_seconds": dict(step_cpu_seconds or {}),
            "accuracy_torch": torch_eval, "accuracy_runtime": runtime_eval, "band": expected,
            "parity": {k: {m: v.get(m) for m in ("extractor_min_cos", "neighbour_overlap_mean",
                                                  "d_rank1", "d_mAP", "verdict")}
                       for k, v in parity.items()},
            "throughput": bench.get("throughput", {}), "paper_size_targets_met": paper}
