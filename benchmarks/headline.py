"""The README's headline results table, drawn from the JSON in ``docs/results/``.

``python -m benchmarks.headline`` prints it; ``tests/test_readme.py`` checks that the README
holds exactly this table, so the landing page cannot drift from the measured files.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
THROUGHPUT_ROWS = (("torch/fp32", "torch eager fp32"), ("ort-cpu/fp32", "ONNX Runtime fp32"),
                   ("openvino/bf16", "OpenVINO bf16"), ("ort-cpu/int8", "ONNX Runtime int8"),
                   ("openvino/int8", "OpenVINO int8"))


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _pm(stat: dict, signed: bool = False) -> str:
    return f"{stat['mean']:{'+' if signed else ''}.1f} +- {stat['std']:.1f}"


def demo_rows(demo: dict) -> list[str]:
    """The current demo recipe's one training seed: transfer, shared-only, the gain."""
    acc = demo["accuracy_torch"]
    what = f"`make demo` (MobileNetV2, ImageNet start, {demo['training']['steps']} steps), 1 seed"
    fig = lambda d, sign="": (f"Rank-1 {d['rank1']:{sign}.1f}, mAP {d['mAP']:{sign}.1f}, "
                              f"mINP {d['mINP']:{sign}.1f}")
    gain = {m: acc["transfer"][m] - acc["shared-only"][m] for m in ("rank1", "mAP", "mINP")}
    return [f"| {what} | cm-SSFT transfer (all queries) | {fig(acc['transfer'])} |",
            f"| {what} | shared features only | {fig(acc['shared-only'])} |",
            f"| {what} | gain of the transfer | {fig(gain, '+')} |"]


def _recipe(sweep: dict) -> str:
    """What a sweep trained, from its own config: '<demo | previous demo> (arch, steps)'."""
    cfg = sweep["config"]
    arch = {"mobilenet_v2": "MobileNetV2", "resnet18": "ResNet-18"}.get(cfg["arch"], cfg["arch"])
    start = "ImageNet start" if cfg.get("pretrained") else "from scratch"
    start = f", {start}" if cfg.get("pretrained") else f" {start}"
    which = "demo" if sweep.get("config_file") == "configs/demo.json" else "previous demo"
    return f"{which} ({arch}{start}, {cfg['epochs'] * cfg['batches_per_epoch']} steps)"


def accuracy_rows(sweep: dict) -> list[str]:
    """Transfer, shared-only and the gain, mean +- std over the sweep's training seeds; then
    the same on each ``--other`` test set (another generator seed) the sweep scored."""
    n = len(sweep["seeds"])
    rows = []
    parts = [("", sweep["summary"])] + [
        (f", test set of another generator seed ({name})", o["summary"])
        for name, o in sweep.get("other", {}).items()]
    for where, s in parts:
        what = f"{_recipe(sweep)}, {n} seeds{where}"
        for key, name in (("transfer", "cm-SSFT transfer (all queries)"),
                          ("shared-only", "shared features only")):
            rows.append(f"| {what} | {name} | Rank-1 {_pm(s[key]['rank1'])}, "
                        f"mAP {_pm(s[key]['mAP'])}, mINP {_pm(s[key]['mINP'])} |")
        g = s["gain"]["transfer_minus_shared"]
        rows.append(f"| {what} | gain of the transfer | Rank-1 "
                    f"{_pm(g['rank1'], True)}, mAP {_pm(g['mAP'], True)}, "
                    f"mINP {_pm(g['mINP'], True)} |")
    return rows


def video_rows(recall: dict, tracking: dict, cameras: dict) -> list[str]:
    """The detector on the hand-boxed real clip, tracks per person before / after stitching,
    cameras one machine sustains."""
    rows = [f"| person detector, {r['frames']} hand-boxed frames of a real clip (vtest.avi) | "
            f"{r['detector']} | recall {r['recall']:.3f} at IoU 0.5, false boxes "
            f"{r['false_rate']:.1%} |"
            for r in recall["rows"] if not r.get("options")]
    d = tracking["default"]
    tpp, idf1 = d["tracks_per_person"], d["IDF1"]
    rows.append(f"| tracking, synthetic scenes ({d['detector']} + ByteTrack) | appearance "
                f"stitching, before -> after | tracks per person {tpp['before']:.2f} -> "
                f"{tpp['after']:.2f}, IDF1 {idf1['before']:.3f} -> {idf1['after']:.3f} |")
    rows += photo_rows(tracking.get("photo", {}))
    for t in cameras["targets"]:
        est = (f"; {t['cpu_time_estimate']:.1f} from CPU time" if "cpu_time_estimate" in t
               else " (from CPU time)")
        rows.append(f"| {t['target']} | end to end: decode, detect, track, extract, associate | "
                    f"{t['value']:.1f} cameras (wall clock{est}) |")
    return rows


def photo_rows(photo: dict) -> list[str]:
    """ssdlite + ByteTrack on the photographed-people scenes: every frame, and on the largest
    stride with the flow between detections."""
    pipe = [r for r in photo.get("tracking", []) if r.get("detector") == "ssdlite"
            and (r["activation"], r["match_threshold"], r["lost_frames"]) == (0.25, 0.8, 30)
            and r.get("between", "flow") == "flow"]
    rows = []
    for r in sorted(pipe, key=lambda r: r.get("detect_every", 1)):
        every = r.get("detect_every", 1)
        if every not in (1, max(x.get("detect_every", 1) for x in pipe)):
            continue
        m = r["mean"]
        how = "every frame" if every == 1 else f"every {every}th frame, optical flow between"
        rows.append(f"| tracking, photographed people on scripted paths (ssdlite + ByteTrack) | "
                    f"{how} | HOTA {m['HOTA']:.3f}, IDF1 {m['IDF1']:.3f}, MOTA {m['MOTA']:.3f}, "
                    f"tracks per person {m['tracks_per_person']:.2f} |")
    return rows


def gallery_rows(stores: dict) -> list[str]:
    """Adds and single-query two-stage search latency per store at 10k entries."""
    rows = []
    for p in stores["points"]:
        if p.get("n") != 10000 or "p50_ms" not in p:
            continue
        load = " (under load)" if p.get("under_load") else ""
        rows.append(f"| gallery store at 10k entries, 512 + 512-d{load} | {p['store']} | "
                    f"{p['adds_per_s']:,.0f} adds/s; search p50 {p['p50_ms']:,.0f} ms, "
                    f"p99 {p['p99_ms']:,.0f} ms |")
    return rows


def throughput_rows(latency: dict) -> list[str]:
    """Images/s of the paper-size extractor at batch 32, one process per backend."""
    model = next(m for m in latency["models"] if m.get("arch") == "resnet50")
    size = "x".join(str(v) for v in model["input_size"])
    got = {r["name"]: r["throughput"] for r in model["results"] if r["batch"] == 32}
    torch = got.get("torch/fp32")
    rows = []
    for key, name in THROUGHPUT_ROWS:
        if key in got:
            ratio = f" ({got[key] / torch:.1f}x torch)" if torch and key != "torch/fp32" else ""
            rows.append(f"| CPU, ResNet-50 {size}, batch 32 | {name} | "
                        f"{got[key]:.1f} img/s{ratio} |")
    return rows


def table() -> str:
    """The headline table (markdown)."""
    latency = _load("latency.json")
    machine = latency["machine"]
    isa = ", ".join(k for k in ("avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
                    if machine["isa"].get(k)) or "no AVX-512 VNNI / AMX"
    lines = ["| what | setting | measured |", "| --- | --- | --- |",
             *demo_rows(_load("demo_results.json")), *accuracy_rows(_load("accuracy_demo.json")),
             *throughput_rows(latency),
             *video_rows(_load("detector_recall.json"), _load("tracking_quality.json"),
                         _load("video_cameras.json")),
             *gallery_rows(_load("gallery_stores.json"))]
    video = _load("video_cameras.json")["machine"]
    return "\n".join(lines) + (
        f"\n\nResNet-50 throughput: {machine['cpu']} ({isa}), {machine['logical_cores']} cores, "
        f"no GPU. Demo, detector, tracking, camera and gallery rows: {video['cpu']}, "
        f"{video.get('logical_cores', 2)} cores, no GPU.")


@click.command()
def main() -> None:
    """Print the README's headline table."""
    click.echo(table())


if __name__ == "__main__":
    main()
