"""`make gpu-check`'s driver on a machine without a GPU: it still writes its JSON, each GPU step
skipped with its reason, bad wheels and spent budgets recorded rather than fatal."""

from __future__ import annotations

import json

from benchmarks import gpu_check


def test_without_gpu_every_step_says_why_and_the_json_is_written(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    code = gpu_check.main(["--out", str(tmp_path / "out"), "--wheels", str(wheels),
                           "--steps", "probe,affinity,nosuch", "--budget", "120"])
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert code == 0 and report["gpu"] is None
    assert report["install"] == [{"file": "broken-1.0-py3-none-any.whl", "installed": False,
                                  "error": report["install"][0]["error"]}]
    steps = report["steps"]
    assert steps["probe"]["status"] == "skip" and "no GPU" in steps["probe"]["reason"]
    assert steps["probe"]["importable"]["numpy"] != "no"
    assert set(steps["probe"]["backends"]) == {"tensorrt", "ort-cuda", "ort-cpu", "openvino"}
    assert steps["affinity"] == {"status": "skip", "seconds": steps["affinity"]["seconds"],
                                 "reason": "no GPU usable through CuPy or pycuda"}
    assert steps["nosuch"]["reason"] == "unknown step"


def test_a_spent_budget_skips_the_remaining_steps(tmp_path):
    code = gpu_check.main(["--out", str(tmp_path), "--wheels", str(tmp_path / "none"),
                           "--steps", "probe,tests", "--budget", "10"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0 and report["install"] == []
    assert all("budget spent" in s["reason"] for s in report["steps"].values())


def test_junit_results_reads_every_outcome(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="t" name="a" time="1.5"/>'
        '<testcase classname="t" name="b"><failure message="boom"/></testcase>'
        '<testcase classname="t" name="c"><skipped message="no GPU"/></testcase>'
        '<testcase classname="t" name="d"><error message="fixture"/></testcase>'
        '</testsuite></testsuites>')
    rows = gpu_check.junit_results(xml)
    assert [(r["test"], r["outcome"], r["message"]) for r in rows] == [
        ("t::a", "passed", ""), ("t::b", "failed", "boom"), ("t::c", "skipped", "no GPU"),
        ("t::d", "error", "fixture")]
    assert gpu_check.junit_results(tmp_path / "missing.xml") == []
