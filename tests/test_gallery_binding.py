"""A gallery is bound to its bundle (issue 15 item 5): dims and model hash recorded in the file,
refused at open, and ``ssft-serve --gallery`` refuses at start instead of reporting ready."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import tests.bundle_factory as factory
from ssft_deploy.bundle import load_bundle
from ssft_deploy.errors import GalleryError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, bundle_binding, open_gallery
from ssft_deploy.runtime import ReIDRuntime
from ssft_deploy.serving import launch
from ssft_deploy.serving.pytriton_server import load_gallery


def feats(n, ds, dp, modality="rgb", seed=0):
    rng = np.random.default_rng(seed)
    return Features(rng.standard_normal((n, ds)), rng.standard_normal((n, dp)), modality)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bundle):
    """The tiny bundle, one of other dims, and one of the same dims but other weights."""
    root = tmp_path_factory.mktemp("bundles")
    mp = pytest.MonkeyPatch()
    mp.setattr(factory, "DS", factory.DS + 3)
    wide = factory.make_bundle(root / "wide")
    mp.undo()
    mp.setattr(factory, "SEEDS", {k: v + 100 for k, v in factory.SEEDS.items()})
    other = factory.make_bundle(root / "other")
    mp.undo()
    return {"tiny": tiny_bundle, "wide": wide, "other": other}


@pytest.fixture(scope="module")
def tiny_gallery_file(bundles, tmp_path_factory):
    b = bundle_binding(load_bundle(bundles["tiny"]))
    g = Gallery(*b.dims, b.model_hash)
    g.add(feats(6, *b.dims), pids=np.arange(6), camids=1)
    path = tmp_path_factory.mktemp("g") / "tiny.gallery"
    g.save(path)
    return path


def test_gallery_file_records_the_binding(bundles, tiny_gallery_file):
    b = bundle_binding(load_bundle(bundles["tiny"]))
    loaded = Gallery.load(tiny_gallery_file)
    assert loaded.binding == b and len(b.model_hash) == 64


@pytest.mark.parametrize("which", ["wide", "other"])
def test_another_bundles_gallery_is_refused_at_open(bundles, tiny_gallery_file, which):
    binding = bundle_binding(load_bundle(bundles[which]))
    with pytest.raises(GalleryError, match="dims|another model"):
        Gallery.load(tiny_gallery_file, binding)
    with pytest.raises(GalleryError):
        load_gallery(tiny_gallery_file, binding)        # the server's loader
    with pytest.raises(GalleryError):
        ReIDRuntime.open(bundles[which], backend="ort-cpu",
                         gallery=Gallery.load(tiny_gallery_file))
    with pytest.raises(GalleryError):
        open_gallery(tiny_gallery_file, binding)        # the local store too


def test_own_bundle_opens_its_gallery(bundles, tiny_gallery_file):
    b = bundle_binding(load_bundle(bundles["tiny"]))
    assert len(Gallery.load(tiny_gallery_file, b)) == 6
    with ReIDRuntime.open(bundles["tiny"], backend="ort-cpu",
                          gallery=Gallery.load(tiny_gallery_file)) as rt:
        assert len(rt.gallery) == 6


def test_a_wider_gallery_never_reaches_a_narrower_runtime(bundles, tmp_path):
    """The reported case: a gallery of other dims loaded, server ready, every search failing."""
    wide = bundle_binding(load_bundle(bundles["wide"]))
    g = Gallery(*wide.dims)                              # not even a model hash recorded
    g.add(feats(4, *wide.dims), pids=np.arange(4), camids=1)
    g.save(tmp_path / "wide.gallery")
    with pytest.raises(GalleryError, match="dims"):
        load_gallery(tmp_path / "wide.gallery", bundle_binding(load_bundle(bundles["tiny"])))


def test_serve_refuses_a_mismatched_gallery_at_start(bundles, tiny_gallery_file, monkeypatch):
    started = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: started.append(a))
    srv = launch.TritonServerProcess(bundles["wide"], gallery=tiny_gallery_file, ports=(1, 2, 3))
    with pytest.raises(GalleryError):
        srv.start()
    res = CliRunner().invoke(launch.main, ["--bundle", str(bundles["other"]),
                                           "--gallery", str(tiny_gallery_file)])
    assert res.exit_code == 2 and "another model" in res.output and "Traceback" not in res.output
    assert started == []                                  # no server process was launched
