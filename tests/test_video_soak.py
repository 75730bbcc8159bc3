"""``benchmarks/video_soak.py`` runs a few seconds with every fault injected and writes its keys;
its verdict helper judges flatness and RSS growth as documented."""

from __future__ import annotations

import json

from click.testing import CliRunner

from benchmarks.video_soak import main, verdicts
from examples.make_video import make_videos


def test_soak_runs_with_every_fault_and_accounts_for_every_track(tiny_bundle, tmp_path):
    scene = tmp_path / "scene"
    make_videos(scene, people=2, frames=20, crop_size=(64, 32), lead_in=5)
    out = tmp_path / "soak.json"
    res = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--scene", str(scene),
                                    "--cameras", "2", "--minutes", "0.08", "--sample-s", "0.5",
                                    "--warmup-s", "1", "--stall-every-s", "3", "--stall-s", "1",
                                    "--picture-fail-every", "2", "--detector-fail-every", "7",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["frames"] > 0 and r["tracks"] > 0 and r["unaccounted"] == 0
    assert r["detector_faults"] > 0 and r["stalls"] >= 1
    assert r["pictures_failed"] == r["picture_writes"].get("failed", 0)
    assert r["events_written"] == r["events"]
    stages = {e["stage"] for e in r["errors"]}
    assert "detect" in stages and r["exit_code"] == 5
    assert len(r["samples"]) >= 3 and set(r["targets"]) == {
        "threads_flat", "open_files_flat", "rss_growth_under_10pct", "zero_tracks_unaccounted"}
    assert out.with_suffix(".png").stat().st_size > 0


def test_verdicts_flag_growth():
    flat = [{"t": t, "py_threads": 5, "os_threads": 9, "open_files": 12, "rss_mib": 100.0}
            for t in range(10)]
    v = verdicts(flat, 0)
    assert v["open_files"]["flat"] and v["rss"]["met"] and v["rss"]["growth"] == 0
    leak = [{**s, "open_files": 12 + s["t"], "rss_mib": 100.0 + 3 * s["t"]} for s in flat]
    v = verdicts(leak, 2)
    assert not v["open_files"]["flat"] and not v["rss"]["met"]
    assert v["rss"]["at_warmup_end_mib"] == 106.0 and v["rss"]["growth"] == round(21 / 106, 4)
