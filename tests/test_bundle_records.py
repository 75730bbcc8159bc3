"""Records checked, not trusted (issue 20 item 6): a gate verdict is re-judged at open against
the package's own threshold table, and each graph's role is fingerprinted at export and checked
at open, so an edited "pass" or a swapped graph (hashes updated) is refused."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from ssft_deploy.bundle import load_bundle, sha256_file, write_manifest
from ssft_deploy.engines import open_engine
from ssft_deploy.errors import BundleError
from ssft_deploy.runtime import ReIDRuntime
from ssft_deploy.verdicts import model_digest
from tests.bundle_factory import make_bundle
from tests.test_engines_trt_fake import fake_gpu  # noqa: F401  (the fixture)


def _edit(root, fn) -> None:
    man = json.loads((root / "manifest.json").read_text())
    fn(man)
    write_manifest(root, man)


def _record(man, variant="fp32"):
    return man["gate"]["variants"][variant]


def test_pass_whose_figures_miss_the_thresholds_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")

    def forge(man):
        rec = _record(man)
        rec["figures"].update(extractor_min_cos=0.2, d_rank1=-40.0)
        rec["thresholds"].update(extractor_min_cos=0.1, max_abs_d_rank1=50.0)  # its own: ignored
        rec["verdict"], rec["failed"] = "pass", []

    _edit(root, forge)
    with pytest.raises(BundleError, match=r"figures miss .*fp32.*extractor_min_cos.*d_rank1"):
        ReIDRuntime.open(root, backend="ort-cpu")
    with pytest.raises(BundleError, match="extractor_min_cos"):
        load_bundle(root)


@pytest.mark.parametrize("deleted", [("figures", "thresholds"), ("figures",)])
def test_pass_without_figures_is_refused(tmp_path, deleted):
    root = make_bundle(tmp_path / "b")
    _edit(root, lambda man: [_record(man).pop(k) for k in deleted])
    with pytest.raises(BundleError, match="figures miss"):
        ReIDRuntime.open(root, backend="ort-cpu")


def test_pass_cannot_claim_a_looser_precision(tmp_path):
    """An fp32 variant whose record says int8 would be judged on int8's looser bounds."""
    root = make_bundle(tmp_path / "b")

    def loosen(man):
        rec = _record(man)
        rec["precision"] = "int8"
        rec["figures"]["extractor_min_cos"] = 0.985  # passes int8 (0.98), not fp32

    _edit(root, loosen)
    with pytest.raises(BundleError, match="precision 'int8'.*'fp32'"):
        load_bundle(root)


def test_genuine_pass_still_opens(tiny_bundle):
    with ReIDRuntime.open(tiny_bundle, backend="ort-cpu") as rt:
        assert rt.extract_array(np.zeros((1, 3, 16, 8), np.float32), "rgb")[0].shape == (1, 6)


def test_threshold_table_is_one_table():
    """export judges with the runtime's table (ssft_deploy cannot import export)."""
    import export.thresholds as ex
    import ssft_deploy.thresholds as rt

    assert ex.THRESHOLDS is rt.THRESHOLDS and ex.CHECKS is rt.CHECKS


def _swap_ir_into_rgb(root) -> None:
    shutil.copy(root / "extractor_ir.onnx", root / "extractor_rgb.onnx")
    digest = sha256_file(root / "extractor_rgb.onnx")

    def rehash(man):
        man["variants"]["fp32"]["extractor_rgb"]["sha256"] = digest
        _record(man)["files"]["extractor_rgb"] = digest

    _edit(root, rehash)


def test_manifest_holds_a_fingerprint_per_graph(tiny_bundle):
    man = json.loads((tiny_bundle / "manifest.json").read_text())
    probe = man["model"]["probe"]
    assert set(probe["graphs"]) == {"extractor_rgb", "extractor_ir", "transfer"}
    assert set(probe["graphs"]["extractor_rgb"]) == {"shared", "specific"}


def test_swapped_graph_with_updated_hashes_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    _swap_ir_into_rgb(root)
    load_bundle(root, verify=True)  # hashes and verdict agree: only the role check can refuse
    with pytest.raises(BundleError, match="extractor_rgb.*behaves like extractor_ir"):
        ReIDRuntime.open(root, backend="ort-cpu")
    with pytest.raises(BundleError, match="fingerprint"):
        open_engine(root, "extractor_rgb", backend="ort-cpu")
    open_engine(root, "extractor_ir", backend="ort-cpu").close()  # the untouched slot opens


def test_wrong_transfer_graph_is_refused(tmp_path):
    import onnx

    from tests.bundle_factory import transfer_model

    root = make_bundle(tmp_path / "b")
    onnx.save(transfer_model(seed=11), root / "transfer.onnx")  # another model's transfer
    digest = sha256_file(root / "transfer.onnx")

    def rehash(man):
        man["variants"]["fp32"]["transfer"]["sha256"] = digest
        _record(man)["files"]["transfer"] = digest

    _edit(root, rehash)
    with pytest.raises(BundleError, match="transfer.*fingerprint"):
        ReIDRuntime.open(root, backend="ort-cpu")


def test_bundle_without_fingerprints_opens_with_a_warning(tmp_path, caplog):
    root = make_bundle(tmp_path / "b")

    def strip(man):  # an older export: no probe, verdicts bound to that model section
        man["model"].pop("probe")
        _record(man)["model_sha256"] = model_digest(man["model"])

    _edit(root, strip)
    with caplog.at_level(logging.WARNING, logger="ssft_deploy"):
        ReIDRuntime.open(root, backend="ort-cpu").close()
    assert any("no role fingerprints" in r.getMessage() and "re-export" in r.getMessage()
               for r in caplog.records)


def test_fingerprint_edit_invalidates_every_verdict(tmp_path):
    """The fingerprints live in the 'model' section that every verdict is bound to."""
    root = make_bundle(tmp_path / "b")

    def copy_ir(man):
        graphs = man["model"]["probe"]["graphs"]
        graphs["extractor_rgb"] = graphs["extractor_ir"]

    _edit(root, copy_ir)
    with pytest.raises(BundleError, match="'model' section changed"):
        load_bundle(root)


def test_engine_too_small_for_the_probe_opens_with_a_warning(tmp_path, caplog, fake_gpu):  # noqa: F811
    """A TensorRT transfer profile below the probe's rows cannot run it: said, not fatal."""
    from tests.test_engines_trt_fake import _bundle_with_plan

    root = _bundle_with_plan(tmp_path, plans=(("transfer", 3),))
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.roles"):
        eng = open_engine(root, "transfer", backend="tensorrt", allow_ungated=True)
    assert eng.max_batch == 3
    eng.close()
    assert any("role not checked" in r.getMessage() for r in caplog.records)
