"""Identifiers (issue 20 item 5): what add accepts is bounded, what a file holds is validated,
each problem one SSFTError (on the old code: a raw OverflowError / ValueError later, or a pid -3
that hid unknown entries from the ranking)."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, open_gallery
from ssft_deploy.gallery.ids import MAX_ENTRY_ID
from tests.gallery_files import edit_base

pytest.importorskip("faiss")
DIMS = (4, 3)


def feats(n: int, modality: int = 0, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(rng.standard_normal((n, 4)), rng.standard_normal((n, 3)), modality)


@pytest.mark.parametrize("bad", [2**63 - 1, MAX_ENTRY_ID, -1, -5])
def test_entry_ids_outside_the_bound_are_refused(bad):
    g = Gallery(*DIMS)
    with pytest.raises(InputError, match="entry_ids"):
        g.add(feats(1), pids=[1], camids=1, entry_ids=[bad])
    assert len(g) == 0
    assert list(g.add(feats(2), pids=[1, 2], camids=1)) == [0, 1]  # ids still count on


def test_the_largest_entry_id_still_lets_ids_count_on_or_says_why(tmp_path):
    g = open_gallery(tmp_path / "g.gallery", DIMS)
    g.add(feats(1), pids=[1], camids=1, entry_ids=[MAX_ENTRY_ID - 2])
    assert list(g.add(feats(1), pids=[1], camids=1)) == [MAX_ENTRY_ID - 1]
    for store in (g, open_gallery(tmp_path / "g.gallery", DIMS)):  # also in a new handle
        with pytest.raises(GalleryError, match="entry ids"):
            store.add(feats(1), pids=[1], camids=1)
        assert len(store) == 2


def test_identities_below_minus_one_are_refused_and_unknown_entries_rank():
    g = Gallery(*DIMS)
    with pytest.raises(InputError, match="pids"):
        g.add(feats(2), pids=[-3, -1], camids=1)
    g.add(feats(3), pids=[-1, -1, 7], camids=1)
    res = g.search(feats(1, modality=1, seed=5), top=5)[0]
    assert sorted(res.pids.tolist()) == [-1, -1, 7]  # each unknown entry stands for itself


def _saved(tmp_path) -> Gallery:
    g = Gallery(*DIMS)
    g.add(feats(3), pids=[1, 2, 3], camids=1)
    g.save(tmp_path / "g.gallery")
    return tmp_path / "g.gallery"


@pytest.mark.parametrize("next_id", [10**30, -1, 1.5, True, "7"])
def test_a_crafted_next_id_is_refused_at_open(tmp_path, next_id):
    path = edit_base(_saved(tmp_path), lambda h, a: h.update(next_id=next_id))
    for opener in (Gallery.load, lambda p: open_gallery(p, DIMS)):
        with pytest.raises(GalleryError, match="next entry id"):
            opener(path)


def test_header_dims_that_differ_from_the_vectors_are_refused_at_open(tmp_path):
    path = edit_base(_saved(tmp_path), lambda h, a: h["binding"].update(shared_dim=6))
    with pytest.raises(GalleryError, match="dims"):
        Gallery.load(path)
    with pytest.raises(GalleryError, match="dims"):
        open_gallery(path, (6, 3))


@pytest.mark.parametrize("column,value,match", [("pids", -3, "identities"),
                                                ("ids", -4, "entry ids"),
                                                ("ids", 0, "repeated"),
                                                ("modality", 2, "modalities")])
def test_stored_values_add_would_refuse_are_refused_at_open(tmp_path, column, value, match):
    def edit(h, a):
        a[column][1] = value

    path = edit_base(_saved(tmp_path), edit)
    with pytest.raises(GalleryError, match=match):
        Gallery.load(path)


def test_a_next_id_below_the_stored_ids_does_not_reuse_them(tmp_path):
    path = edit_base(_saved(tmp_path), lambda h, a: h.update(next_id=0))
    g = open_gallery(path, DIMS)
    assert list(g.add(feats(1), pids=[4], camids=1)) == [3]  # not 0: that would replace one
    assert len(g) == 4
