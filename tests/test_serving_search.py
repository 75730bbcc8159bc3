"""The server's search function in process (no Triton): an empty gallery, a gallery file another
process changes, and query features the gallery would refuse to store."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, bundle_binding, open_gallery
from ssft_deploy.serving.pytriton_server import make_search_fn, open_served_gallery, save_gallery
from ssft_deploy.serving.requests import ERROR

TOP = 3


def feats(runtime, n: int, seed: int, modality: str) -> Features:
    crops = np.random.default_rng(seed).integers(0, 256, (n, 24, 12, 3), dtype=np.uint8)
    return runtime.extract(list(crops), modality=modality)


def request(q: Features, row: int = 0) -> dict[str, np.ndarray]:
    return {"shared": q.shared[row:row + 1], "specific": q.specific[row:row + 1],
            "modality": q.modality[row:row + 1, None]}


def answer(search, q: Features, row: int = 0) -> dict[str, np.ndarray]:
    out = search([request(q, row)])[0]
    assert out[ERROR].tolist() == [[b""]], out[ERROR]
    return out


def error_of(out) -> str:
    return out[ERROR].reshape(-1)[0].decode()


@pytest.fixture(scope="module")
def binding(tiny_runtime):
    return bundle_binding(tiny_runtime.bundle)


@pytest.mark.parametrize("form", ["gallery", "npz"])
def test_empty_gallery_answers_an_empty_result(tiny_runtime, binding, tmp_path, form):
    """Today every search of an empty gallery is the server's fault (INTERNAL: HTTP 500)."""
    path = tmp_path / f"empty.{form}"
    if form == "gallery":
        Gallery().save(path)
    else:
        save_gallery(path, Features.empty(*binding.dims), np.zeros(0), np.zeros(0))
    search = make_search_fn(tiny_runtime, open_served_gallery(path, binding), TOP)
    out = answer(search, feats(tiny_runtime, 1, 1, "ir"))
    assert out["pids"].tolist() == [[-1] * TOP] and out["entry_ids"].tolist() == [[-1] * TOP]
    assert np.isinf(out["distances"]).all()


def test_gallery_file_changed_by_another_writer_is_searched_next_request(tiny_runtime, binding,
                                                                        tmp_path):
    """The server opened the file once and never read it again (README: readers reload)."""
    path = tmp_path / "g.gallery"
    writer = open_gallery(path, binding)
    writer.add(feats(tiny_runtime, 4, 2, "rgb"), pids=[0, 1, 2, 3], camids=0)
    link = tmp_path / "served.gallery"          # served through a link, written to directly
    link.symlink_to(path)
    search = make_search_fn(tiny_runtime, open_served_gallery(link, binding), TOP)
    q = feats(tiny_runtime, 1, 3, "ir")
    assert set(answer(search, q)["pids"][0].tolist()) <= {0, 1, 2, 3}
    writer.remove(pids=[0, 1, 2, 3])
    assert answer(search, q)["pids"].tolist() == [[-1] * TOP]        # emptied: an empty answer
    new = writer.add(feats(tiny_runtime, 2, 4, "rgb"), pids=[7, 8], camids=1)
    out = answer(search, q)
    assert sorted(out["pids"][0][:2].tolist()) == [7, 8]
    assert sorted(out["entry_ids"][0][:2].tolist()) == sorted(new.tolist())


def spoiled(q: Features, field: str, kind: str) -> Features:
    shared, specific = q.shared.copy(), q.specific.copy()
    row = (shared if field == "shared" else specific)[0]
    row[:] = 0.0 if kind == "zeros" else np.float32(1e-40)      # every value subnormal
    return Features(shared, specific, q.modality)


@pytest.mark.parametrize("field", ["shared", "specific"])
@pytest.mark.parametrize("kind", ["zeros", "denormal"])
def test_query_features_the_gallery_refuses_are_the_clients_error(tiny_runtime, binding,
                                                                  tmp_path, field, kind):
    """Today an all-zero or denormal query is searched (an answer ranked at random)."""
    g = Gallery(*binding.dims, binding.model_hash)
    g.add(feats(tiny_runtime, 4, 5, "rgb"), pids=[0, 1, 2, 3], camids=0)
    bad = spoiled(feats(tiny_runtime, 2, 6, "ir"), field, kind)
    with pytest.raises(InputError) as refused:            # what the gallery says when storing it
        Gallery(*binding.dims).add(bad.take([0]), pids=[9], camids=0)
    outs = make_search_fn(tiny_runtime, g, TOP)([request(bad, 0), request(bad, 1)])
    assert error_of(outs[0]) == f"INVALID_ARG: ssft_search: {refused.value}"
    assert error_of(outs[1]) == "" and outs[1]["pids"][0].min() >= 0   # its batch-mate: answered
