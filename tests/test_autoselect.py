"""precision="auto": the fastest gated variant on a stubbed measurement, cached per machine and
bundle, logged; ungated or unrunnable variants never picked; explicit choices win."""

from __future__ import annotations

import json
import logging

import pytest

from ssft_deploy.bundle import load_bundle, write_manifest
from ssft_deploy.engines import autoselect
from ssft_deploy.engines.openvino import cpu_capabilities
from ssft_deploy.errors import EngineError
from tests.bundle_factory import gate, make_bundle


@pytest.fixture()
def bundle(tmp_path, monkeypatch):
    """The tiny bundle with an ``int8`` and a ``bf16`` (OpenVINO) variant over the same files,
    all three passed by the real parity gate."""
    monkeypatch.setenv("SSFT_CACHE", str(tmp_path / "cache"))
    root = make_bundle(tmp_path / "bundle", input_size=(16, 8))
    man = json.loads((root / "manifest.json").read_text())
    fp32 = man["variants"]["fp32"]
    man["variants"]["int8"] = {g: dict(e) for g, e in fp32.items()}
    man["variants"]["bf16"] = {g: {**e, "backend": "openvino"} for g, e in fp32.items()}
    write_manifest(root, man)
    variants = ["int8", "bf16"] if "BF16" in cpu_capabilities() else ["int8"]
    records = gate(root, variants=variants)
    assert all(r["verdict"] == "pass" for r in records.values()), records
    return root


class Stub:
    """A measurement returning fixed images/s and counting its calls."""

    def __init__(self, speeds: dict[str, float]) -> None:
        self.speeds, self.calls = speeds, []

    def __call__(self, bundle, pairs, batch, threads, device_id=0):
        self.calls.append(sorted(pairs))
        return {f"{b}/{p}": self.speeds.get(f"{b}/{p}", 1.0) for b, p in pairs}


def _set_verdict(root, variant, verdict):
    man = json.loads((root / "manifest.json").read_text())
    man["gate"]["variants"][variant]["verdict"] = verdict
    write_manifest(root, man)


def test_picks_the_fastest_gated_variant_and_logs_why(bundle, caplog):
    stub = Stub({"ort-cpu/int8": 900.0, "ort-cpu/fp32": 300.0})
    with caplog.at_level(logging.INFO, logger="ssft_deploy.engines.autoselect"):
        pick = autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert (pick.backend, pick.precision) == ("ort-cpu", "int8")
    assert stub.calls == [[("ort-cpu", "fp32"), ("ort-cpu", "int8")]]
    assert not pick.cached
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "ort-cpu" in msg and "int8" in msg and "900.0" in msg and "fastest" in msg


def test_measurement_is_cached_per_machine_and_bundle(bundle, monkeypatch):
    stub = Stub({"ort-cpu/fp32": 500.0, "ort-cpu/int8": 100.0})
    first = autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    again = autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert len(stub.calls) == 1 and again.cached and again.precision == first.precision == "fp32"
    # Another CPU (ISA flags differ) is another key: measured again.
    real = autoselect.cpu_info()
    monkeypatch.setattr(autoselect, "cpu_info",
                        lambda: {**real, "isa": {**real["isa"], "amx_tile": True}})
    autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert len(stub.calls) == 2
    # Another bundle (its manifest changed) too.
    _set_verdict(bundle, "int8", "fail")
    stub2 = Stub({})
    autoselect.choose(bundle, backend="ort-cpu", measure=stub2)  # one candidate left now
    _set_verdict(bundle, "int8", "pass")
    man = json.loads((bundle / "manifest.json").read_text())
    man["created"] = "another export"
    write_manifest(bundle, man)
    autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert len(stub.calls) == 3


def test_ungated_variant_is_never_picked(bundle):
    _set_verdict(bundle, "int8", "fail")
    stub = Stub({"ort-cpu/int8": 10_000.0, "ort-cpu/fp32": 300.0})
    pairs, skipped = autoselect.candidates(load_bundle(bundle), "ort-cpu")
    assert pairs == [("ort-cpu", "fp32")] and "failed the parity gate" in skipped["ort-cpu/int8"]
    pick = autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert pick.precision == "fp32" and stub.calls == []  # one candidate: nothing to measure


def test_bf16_only_on_openvino(bundle):
    pairs, skipped = autoselect.candidates(load_bundle(bundle))
    assert ("ort-cpu", "bf16") not in pairs and "openvino" in skipped["ort-cpu/bf16"]


def test_explicit_precision_wins(bundle):
    pick = autoselect.choose(bundle, backend="ort-cpu", precision="fp32",
                             measure=Stub({"ort-cpu/int8": 1e6}))
    assert pick.precision == "fp32"


def test_no_candidate_says_what_to_do(bundle):
    _set_verdict(bundle, "int8", "fail")
    with pytest.raises(EngineError, match="parity gate"):
        autoselect.choose(bundle, backend="ort-cpu", precision="int8", measure=Stub({}))


def test_runtime_open_auto_uses_the_choice(bundle, monkeypatch):
    from ssft_deploy.runtime import ReIDRuntime

    stub = Stub({"ort-cpu/int8": 900.0, "ort-cpu/fp32": 300.0})
    real = autoselect.choose
    monkeypatch.setattr(autoselect, "choose", lambda *a, **kw: real(*a, **kw, measure=stub))
    with ReIDRuntime.open(bundle, precision="auto", backend="ort-cpu") as rt:
        assert (rt.selection.backend, rt.selection.precision) == ("ort-cpu", "int8")
        assert rt.extractors[0].name == "ort-cpu"
    with ReIDRuntime.open(bundle, precision="fp32", backend="ort-cpu") as rt:
        assert rt.selection is None


def test_real_measurement_returns_a_rate_per_candidate(bundle, monkeypatch):
    monkeypatch.setattr(autoselect, "WARMUP_S", 0.05)
    monkeypatch.setattr(autoselect, "BUDGET_S", 0.1)
    b = load_bundle(bundle)
    thr = autoselect.measure_throughput(b, [("ort-cpu", "fp32"), ("ort-cpu", "int8")], batch=2)
    assert set(thr) == {"ort-cpu/fp32", "ort-cpu/int8"} and min(thr.values()) > 0


def test_each_candidate_is_timed_in_its_own_process(bundle, monkeypatch):
    """Engines sharing one process disturb each other's timing, so each candidate runs in a
    process of its own (engines.probe); a probe that fails says which candidate."""
    import subprocess

    from ssft_deploy.errors import EngineError

    monkeypatch.setattr(autoselect, "WARMUP_S", 0.05)
    monkeypatch.setattr(autoselect, "BUDGET_S", 0.1)
    b = load_bundle(bundle)
    seen, real = [], subprocess.run

    def spy(cmd, *args, **kwargs):
        seen.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    pairs = [("ort-cpu", "fp32"), ("ort-cpu", "int8")]
    autoselect.measure_throughput(b, pairs, batch=2)
    assert len(seen) == autoselect.ROUNDS * len(pairs)
    assert all(c[1:3] == ["-m", "ssft_deploy.engines.probe"] for c in seen)
    assert {tuple(c[4:6]) for c in seen} == set(pairs) and all("--warmup" in c for c in seen)
    with pytest.raises(EngineError, match="timing ort-cpu/bf16"):
        autoselect.measure_throughput(b, [("ort-cpu", "bf16")], batch=2)


def test_cpu_info_names_the_isa_flags():
    info = autoselect.cpu_info()
    assert set(info["isa"]) == set(autoselect.ISA_FLAGS) and info["model"]
