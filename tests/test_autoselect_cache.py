"""The auto-selection cache is input (issue 20 item 7): a corrupt or hostile cache file costs a
warning and a re-measurement (then it is rewritten), never a crash or a wrong pick; the key
holds the GPU and the device, and the probe times the runtime's own device."""

from __future__ import annotations

import json
import logging

import pytest

from ssft_deploy.bundle import load_bundle
from ssft_deploy.engines import autoselect
from tests.test_autoselect import Stub, bundle  # noqa: F401  (the fixture)

SPEEDS = {"ort-cpu/fp32": 300.0, "ort-cpu/int8": 900.0}


def _cache_file(tmp_path):
    files = list((tmp_path / "cache" / "autoselect").glob("*.json"))
    assert len(files) == 1
    return files[0]


def _measured(bundle, tmp_path):  # noqa: F811
    """Fill the cache once; return its file."""
    autoselect.choose(bundle, backend="ort-cpu", measure=Stub(SPEEDS))
    return _cache_file(tmp_path)


def _nested(depth: int) -> str:
    return "[" * depth


def _with_throughput(value):
    return lambda doc: {**doc, "throughput": {**doc["throughput"], "ort-cpu/int8": value}}


CORRUPT = {
    "nested-100000": lambda doc: _nested(100_000),  # the case (over the size limit too)
    "nested-50000": lambda doc: _nested(50_000),    # under the size limit: RecursionError
    "nan": _with_throughput(float("nan")),
    "inf": _with_throughput(float("inf")),
    "negative": _with_throughput(-5.0),
    "zero": _with_throughput(0.0),
    "boolean": _with_throughput(True),
    "string": _with_throughput("900"),
    "missing-pair": lambda doc: {**doc, "throughput": {"ort-cpu/fp32": 300.0}},
    "extra-pair": lambda doc: {**doc, "throughput": {**doc["throughput"], "tensorrt/fp16": 1e9}},
    "not-a-dict": lambda doc: [1, 2, 3],
    "other-key": lambda doc: {**doc, "key": {**doc["key"], "batch": 999}},
    "not-utf8": lambda doc: b"\xff\xfe\x00garbage",
    "huge": lambda doc: {**doc, "pad": "x" * (1 << 20)},
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_cache_warns_remeasures_and_is_rewritten(bundle, tmp_path, caplog, case):  # noqa: F811
    path = _measured(bundle, tmp_path)
    doc = json.loads(path.read_text())
    bad = CORRUPT[case](doc)
    path.write_bytes(bad if isinstance(bad, bytes) else
                     (bad if isinstance(bad, str) else json.dumps(bad)).encode())
    stub = Stub(SPEEDS)
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.engines.autoselect"):
        pick = autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert (pick.backend, pick.precision) == ("ort-cpu", "int8") and not pick.cached
    assert len(stub.calls) == 1  # measured again
    assert any("cache" in r.getMessage() and "re-measur" in r.getMessage()
               for r in caplog.records)
    assert json.loads(path.read_text())["throughput"] == SPEEDS  # rewritten, valid
    again = Stub(SPEEDS)
    assert autoselect.choose(bundle, backend="ort-cpu", measure=again).cached
    assert again.calls == []


def test_valid_cache_is_used_without_a_warning(bundle, tmp_path, caplog):  # noqa: F811
    _measured(bundle, tmp_path)
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.engines.autoselect"):
        assert autoselect.choose(bundle, backend="ort-cpu", measure=Stub({})).cached
    assert not caplog.records


def test_key_holds_the_gpu_and_the_device(bundle, monkeypatch):  # noqa: F811
    monkeypatch.setattr(autoselect, "gpu_info",
                        lambda device_id: {"name": "NVIDIA H100", "driver": "12040"})
    stub = Stub(SPEEDS)
    autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    autoselect.choose(bundle, backend="ort-cpu", measure=stub)
    assert len(stub.calls) == 1
    autoselect.choose(bundle, backend="ort-cpu", measure=stub, device_id=1)  # another device
    assert len(stub.calls) == 2
    monkeypatch.setattr(autoselect, "gpu_info",
                        lambda device_id: {"name": "NVIDIA H100", "driver": "12080"})
    autoselect.choose(bundle, backend="ort-cpu", measure=stub)  # a driver update
    assert len(stub.calls) == 3
    key = autoselect.machine_key(None, device_id=3)
    assert key["device_id"] == 3 and "gpu" in key


def test_probe_times_the_runtimes_device(bundle, monkeypatch):  # noqa: F811
    import subprocess

    monkeypatch.setattr(autoselect, "WARMUP_S", 0.01)
    monkeypatch.setattr(autoselect, "BUDGET_S", 0.02)
    monkeypatch.setattr(autoselect, "ROUNDS", 1)
    seen, real = [], subprocess.run

    def spy(cmd, *args, **kwargs):
        seen.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    autoselect.measure_throughput(load_bundle(bundle), [("ort-cpu", "fp32")], batch=1,
                                  device_id=2)
    assert seen and all(c[c.index("--device") + 1] == "2" for c in seen)


def test_runtime_auto_passes_its_device(bundle, monkeypatch):  # noqa: F811
    from ssft_deploy.runtime import ReIDRuntime

    got = {}
    real = autoselect.choose

    def spy(*a, **kw):
        got.update(kw)
        return real(*a, **{**kw, "measure": Stub(SPEEDS)})

    monkeypatch.setattr(autoselect, "choose", spy)
    ReIDRuntime.open(bundle, precision="auto", backend="ort-cpu", device_id=0).close()
    assert got.get("device_id") == 0
    ReIDRuntime.open(bundle, precision="auto", backend="ort-cpu", device_id=1).close()
    assert got.get("device_id") == 1



@pytest.mark.parametrize("value", [float("nan"), -1.0, True])
def test_invalid_measurement_is_neither_picked_nor_cached(bundle, tmp_path, value):  # noqa: F811
    from ssft_deploy.errors import EngineError

    with pytest.raises(EngineError, match="no valid images/s.*ort-cpu/int8"):
        autoselect.choose(bundle, backend="ort-cpu",
                          measure=Stub({**SPEEDS, "ort-cpu/int8": value}))
    assert not (tmp_path / "cache" / "autoselect").exists() or not list(
        (tmp_path / "cache" / "autoselect").glob("*.json"))
