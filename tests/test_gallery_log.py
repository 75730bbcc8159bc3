"""The local store scales with its writes, not its size (issue 20 item 4): opening writes
nothing, an add appends one record, other handles read only what was appended, faiss indexes are
extended instead of rebuilt, a killed writer's temporary file is cleaned up, torn tails are
ignored, old files still open and newer ones are refused. (On the old code: open and every add
rewrote the whole file under a new inode, every add rebuilt the indexes, temporaries stayed.)"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ssft_deploy.affinity import knn as faiss_knn
from ssft_deploy.errors import GalleryError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, fileio, open_gallery
from ssft_deploy.gallery.table import Entries
from tests.gallery_files import base_record, edit_base, write_records

pytest.importorskip("faiss")
DIMS = (8, 6)


def feats(n: int, modality: int = 0, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(rng.standard_normal((n, 8)), rng.standard_normal((n, 6)), modality)


def filled(path, n: int = 40):
    g = open_gallery(path, DIMS)
    g.add(feats(n), pids=np.arange(n) % 10, camids=1)
    g.add(feats(n // 2, 1, seed=1), pids=np.arange(n // 2) % 10, camids=3)
    return g


def test_open_writes_nothing(tmp_path):
    path = tmp_path / "g.gallery"
    filled(path)
    st = os.stat(path)
    data = path.read_bytes()
    open_gallery(path, DIMS)
    Gallery.load(path)
    after = os.stat(path)
    assert path.read_bytes() == data
    assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_an_add_appends_to_the_same_file(tmp_path):
    path = tmp_path / "g.gallery"
    g = filled(path)
    before, st = path.read_bytes(), os.stat(path)
    g.add(feats(3, seed=9), pids=[1, 2, 3], camids=2)
    data = path.read_bytes()
    assert os.stat(path).st_ino == st.st_ino and data.startswith(before)
    assert len(data) - len(before) < 3 * 4 * sum(DIMS) + 2000  # the batch, not the gallery


def test_other_handles_read_only_what_was_appended(tmp_path, monkeypatch):
    path = tmp_path / "g.gallery"
    g = filled(path)
    reader = open_gallery(path, DIMS)
    starts = []
    real = fileio.records

    def spy(fh, p, start, end):
        starts.append(start)
        return real(fh, p, start, end)

    monkeypatch.setattr(fileio, "records", spy)
    g.add(feats(2, seed=3), pids=[5, 6], camids=2, entry_ids=[900, 901])
    g.remove(entry_ids=[0])
    assert len(reader) == 40 + 20 + 2 - 1
    assert starts and min(starts) > len(fileio.MAGIC)  # incremental, not from the base
    assert reader.meta([900, 0]) == [None, None] and 900 in reader.entries()[1]["ids"]


def _ranked(g, q):
    return [(r.pids.tolist(), r.entry_ids.tolist()) for r in g.search(q, top=8)] + \
        [g.knn(q.shared, "shared", "rgb", 5).tolist()]


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_indexes_follow_adds_and_removes_without_a_rebuild(tmp_path, monkeypatch, index):
    g = open_gallery(tmp_path / "g.gallery", DIMS, index=index)
    n = 300
    g.add(feats(n), pids=np.arange(n) % 30, camids=1)
    q = feats(4, 1, seed=7)
    g.knn(q.shared, "shared", "rgb", 5)                      # builds the index
    builds = []
    real = faiss_knn.build_index
    monkeypatch.setattr(faiss_knn, "build_index",
                        lambda *a, **k: builds.append(a[1]) or real(*a, **k))
    g.add(feats(5, seed=2), pids=[1, 2, 3, 4, 5], camids=2)
    g.remove(entry_ids=[3, 17])
    got = g.knn(q.shared, "shared", "rgb", 5)
    assert builds == []
    fresh = Gallery(*DIMS, index="flat")  # exact answers for the same rows
    f, cols = g.entries()
    fresh.add(f, pids=cols["pids"], camids=cols["camids"], entry_ids=cols["ids"])
    want = fresh.knn(q.shared, "shared", "rgb", 5)
    if index == "flat":
        np.testing.assert_array_equal(got, want)
    else:  # approximate: most of the exact neighbours, none of the removed
        assert np.mean([len(set(a) & set(b)) for a, b in zip(got, want)]) >= 4
    assert not np.isin(got, [3, 17]).any()


def test_a_pinned_older_snapshot_sees_only_its_own_rows():
    t = Entries.empty(*DIMS)
    first = t.append(Entries({**_cols(3, 0)}, [None] * 3))
    second = first.append(Entries({**_cols(2, 3)}, [None] * 2))
    third = first.append(Entries({**_cols(1, 9)}, [None]))   # a branch: must not clobber second
    assert list(first.cols["ids"]) == [0, 1, 2]
    assert list(second.cols["ids"]) == [0, 1, 2, 3, 4]
    assert list(third.cols["ids"]) == [0, 1, 2, 9]
    assert list(second.order()) == [0, 1, 2, 3, 4]


def _cols(n: int, first_id: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(first_id)
    return {"shared": rng.standard_normal((n, 8)).astype(np.float32),
            "specific": rng.standard_normal((n, 6)).astype(np.float32),
            "modality": np.zeros(n, np.int64), "pids": np.arange(n), "camids": np.ones(n, int),
            "tracks": -np.ones(n, int), "ids": first_id + np.arange(n), "ts": np.zeros(n)}


def test_a_search_on_an_older_snapshot_ignores_rows_added_since(tmp_path):
    g = open_gallery(tmp_path / "g.gallery", DIMS)
    g.add(feats(20), pids=np.arange(20), camids=1)
    q = feats(2, 1, seed=4)
    before = g.knn(q.shared, "shared", "rgb", 20)
    with g._pinned():                                    # a search that started before the add
        close = Features(q.shared.repeat(5, 0)[:5], np.ones((5, 6)), 0)
        g2 = open_gallery(tmp_path / "g.gallery", DIMS)
        g2.add(close, pids=[99] * 5, camids=2, entry_ids=np.arange(100, 105))
        g.add(feats(1, seed=8), pids=[98], camids=2, entry_ids=[200])  # extends the index
        np.testing.assert_array_equal(g.knn(q.shared, "shared", "rgb", 20), before)
    assert np.isin(g.knn(q.shared, "shared", "rgb", 5), np.arange(100, 105)).any()


def test_stale_temporaries_are_cleaned_on_open(tmp_path):
    path = tmp_path / "g.gallery"
    filled(path)
    stale = tmp_path / ".g.gallery.k1ll3d.tmp"
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".other.gallery.abc.tmp"     # another file's: left alone
    other.write_bytes(b"y")
    open_gallery(path, DIMS)
    assert not stale.exists() and other.exists()


def test_a_torn_tail_is_ignored_then_cut_off(tmp_path):
    path = tmp_path / "g.gallery"
    g = filled(path)
    good = path.read_bytes()
    g.add(feats(2, seed=5), pids=[1, 2], camids=2)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(good) + (len(whole) - len(good)) // 2])  # killed mid-append
    again = open_gallery(path, DIMS)
    assert len(again) == 60
    again.add(feats(1, seed=6), pids=[3], camids=2)
    assert len(open_gallery(path, DIMS)) == 61
    data = bytearray(path.read_bytes())
    data[len(good) - 50] ^= 1                         # a damaged record with more after it
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="corrupt"):
        open_gallery(path, DIMS)


def test_compaction_keeps_the_contents_and_other_handles_reload(tmp_path):
    path = tmp_path / "g.gallery"
    g = filled(path)
    reader = open_gallery(path, DIMS)
    for i in range(10):
        g.add(feats(1, seed=i), pids=[i], camids=2, entry_ids=[500])  # replaces: dead rows
    size = path.stat().st_size
    g.compact()
    assert path.stat().st_size < size
    f1, c1 = reader.entries()
    f2, c2 = Gallery.load(path).entries()
    np.testing.assert_array_equal(f1.shared, f2.shared)
    np.testing.assert_array_equal(c1["ids"], c2["ids"])
    assert len(c1["ids"]) == 61


def test_many_dropped_rows_compact_the_file_by_themselves(tmp_path, monkeypatch):
    from ssft_deploy.gallery import local

    monkeypatch.setattr(local, "MIN_DEAD", 10)
    path = tmp_path / "g.gallery"
    g = filled(path)
    g.remove(pids=list(range(8)))          # 48 of 60 rows
    header, _ = base_record(path)
    assert header["kind"] == "base" and len(header["meta"]) == 12
    assert len(open_gallery(path, DIMS)) == 12


def test_an_old_format_file_opens_and_converts(tmp_path):
    import hashlib
    import json

    g = Gallery(*DIMS)
    g.add(feats(5), pids=np.arange(5), camids=1, meta=[{"i": i} for i in range(5)])
    f, _ = g.entries()
    t = g._table()
    specs, arrays, off = [], [], 0
    for k, v in t.cols.items():                       # a format 2 file, as the old code wrote
        specs.append({"name": k, "dtype": v.dtype.str, "shape": list(v.shape), "offset": off,
                      "nbytes": v.nbytes})
        arrays.append(v.tobytes())
        off += v.nbytes
    head = json.dumps({"format": "ssft-gallery/2", "next_id": 5, "arrays": specs,
                       "binding": g.binding.to_dict(), "meta": t.meta}).encode()
    body = len(head).to_bytes(8, "little") + head + b"".join(arrays)
    path = tmp_path / "old.gallery"
    path.write_bytes(fileio.MAGIC_V1 + hashlib.sha256(body).digest() + body)
    assert Gallery.load(path).meta([4]) == [{"i": 4}]
    s = open_gallery(path, DIMS)                     # read as it is
    assert path.read_bytes().startswith(fileio.MAGIC_V1)
    assert list(s.add(feats(1), pids=[1], camids=1)) == [5]  # converted once, then appended
    assert path.read_bytes().startswith(fileio.MAGIC)
    np.testing.assert_array_equal(Gallery.load(path).entries()[0].shared[:5], f.shared)


def test_a_newer_format_is_refused_clearly(tmp_path):
    path = tmp_path / "g.gallery"
    filled(path)
    data = path.read_bytes()
    path.write_bytes(data[:7] + b"\x04" + data[8:])
    with pytest.raises(GalleryError, match="newer"):
        open_gallery(path, DIMS)
    path.write_bytes(data)
    edit_base(path, lambda h, a: h.update(format="ssft-gallery/4"))
    with pytest.raises(GalleryError, match="upgrade"):
        Gallery.load(path)
    header, arrays = base_record(path)
    header["format"] = "ssft-gallery/3"
    write_records(path, [(header, arrays), ({"kind": "merge", "next_id": 0}, {})])
    with pytest.raises(GalleryError, match="upgrade"):
        Gallery.load(path)
