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


def summarize(out: Path) -> dict[str, Any]:
    """Collect the demo's JSON outputs under ``out``, print the summary and return it."""
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
        met = bench.get("targets_met", {})
        if met:
            print("  targets: " + ", ".join(f"{k}={'met' if v else 'missed' if v is False else 'n/a'}"
                                            for k, v in met.items()))
    if video:
        right = video.get("rank1_correct")
        print(f"video example: {len(video.get('matches', []))} IR tracks matched against "
              f"{len(video.get('gallery_tracks', []))} RGB tracks"
              + (f", {right} correct at rank 1" if right is not None else ""))
    return {"accuracy_torch": torch_eval, "accuracy_runtime": runtime_eval,
            "parity": {k: {m: v.get(m) for m in ("extractor_min_cos", "neighbour_overlap_mean",
                                                  "d_rank1", "d_mAP", "verdict")}
                       for k, v in parity.items()},
            "throughput": bench.get("throughput", {}), "targets_met": bench.get("targets_met", {})}
