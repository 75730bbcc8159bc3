"""Gallery: add / remove / search, persistence round trip, corrupt files, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features
from ssft_deploy.gallery import MAGIC, Gallery
from ssft_deploy.transfer import SSTN, RollingAuxiliary, l2_distances
from tests.test_transfer import stand_in_transfer

ROOT = Path(__file__).resolve().parents[1]


def assert_same_entries(a, b) -> None:
    """Two galleries hold the same entries: features and every column, per modality."""
    for m in ("rgb", "ir"):
        (fa, ca), (fb, cb) = a.entries(m), b.entries(m)
        np.testing.assert_array_equal(fa.shared, fb.shared)
        np.testing.assert_array_equal(fa.specific, fb.specific)
        for k in ca:
            np.testing.assert_array_equal(ca[k], cb[k])


def people(pids, modality, seed, ds=12, dp=8, noise=0.1):
    """Features clustered by identity: the same pid gives nearby shared features."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((100, ds))
    pids = np.asarray(pids)
    shared = centres[pids] + noise * rng.standard_normal((len(pids), ds))
    return Features(shared, rng.standard_normal((len(pids), dp)), modality)


@pytest.fixture
def gallery():
    g = Gallery()
    g.add(people([1, 1, 2, 3, 4], "rgb", seed=0), pids=[1, 1, 2, 3, 4], camids=[1, 2, 1, 4, 5],
          meta=[{"frame": i} for i in range(5)])
    g.add(people([5, 6], "ir", seed=1), pids=[5, 6], camids=3, tracks=[7, 8])
    return g


def test_add_keeps_modalities_apart(gallery):
    assert len(gallery) == 7
    rgb, cols = gallery.entries("rgb")
    assert len(rgb) == 5 and (rgb.modality == 0).all() and list(cols["pids"]) == [1, 1, 2, 3, 4]
    ir, cols = gallery.entries("ir")
    assert len(ir) == 2 and (ir.modality == 1).all() and list(cols["ids"]) == [5, 6] and list(cols["tracks"]) == [7, 8]
    assert gallery.meta([0, 4, 6]) == [{"frame": 0}, {"frame": 4}, None]
    with pytest.raises(InputError):
        gallery.add(people([1], "rgb", seed=2, ds=5), pids=[1], camids=[1])
    with pytest.raises(InputError):
        gallery.add(people([1, 2], "rgb", seed=2), pids=[1], camids=[1, 1])


def test_search_ranks_identities_across_modality(gallery):
    query = people([3, 2], "ir", seed=5)
    res = gallery.search(query, top=4)
    assert [r.pids[0] for r in res] == [3, 2]
    assert len(gallery.search(query, top=2)[0].pids) == 2
    for r in res:
        assert len(r.pids) == 4 and len(set(r.pids)) == 4 and (np.diff(r.distances) >= 0).all()
        assert set(r.pids) <= {1, 2, 3, 4}              # IR queries only see RGB entries
    rgb, cols = gallery.entries("rgb")
    ref = l2_distances(query.shared, rgb.shared)[0]
    assert res[0].distances[0] == pytest.approx(ref[cols["pids"] == 3].min(), abs=1e-6)
    # identity 1 has two entries: its distance is that of the closer one
    d1 = ref[cols["pids"] == 1].min()
    assert res[0].distances[list(res[0].pids).index(1)] == pytest.approx(d1, abs=1e-6)
    assert res[0].entry_ids[list(res[0].pids).index(1)] == cols["ids"][ref == d1][0]
    # an RGB query sees the IR entries
    assert set(gallery.search(people([5], "rgb", seed=6), top=5)[0].pids) == {5, 6}


def test_search_with_transfer_modes(gallery):
    query = people([3, 2, 4], "ir", seed=7)
    sstn = SSTN(stand_in_transfer, k=2)
    rgb, _ = gallery.entries("rgb")
    single = gallery.search(query, top=4, transfer=sstn, mode="single-query")
    ref = sstn.single_query_distances(query, rgb)
    for r, d in zip(single, ref):
        assert r.distances[0] == pytest.approx(d.min(), abs=1e-6)
    aux = RollingAuxiliary(size=4)
    gallery.search(query, top=4, transfer=sstn, mode="rolling", auxiliary=aux)
    assert len(aux) == 3
    rolled = gallery.search(query.take([0]), top=4, transfer=sstn, mode="rolling", auxiliary=aux)
    expect = sstn.auxiliary_distances(query.take([0]), rgb, query)[0]
    assert rolled[0].distances[0] == pytest.approx(expect.min(), abs=1e-6)
    assert len(aux) == 4
    with pytest.raises(InputError):
        gallery.search(query, mode="single-query")
    with pytest.raises(InputError):
        gallery.search(query, transfer=sstn, mode="rolling")


def test_remove_by_identity_camera_or_entry(gallery):
    assert gallery.remove(pids=[1]) == 2
    assert gallery.remove(camids=3) == 2
    assert gallery.remove(entry_ids=[2, 99]) == 1
    _, cols = gallery.entries()
    assert list(cols["pids"]) == [3, 4] and list(cols["ids"]) == [3, 4]
    assert gallery.remove(pids=[42]) == 0
    with pytest.raises(InputError):
        gallery.remove()


def test_save_load_round_trip(gallery, tmp_path):
    path = tmp_path / "g.ssftg"
    gallery.remove(entry_ids=[2])
    gallery.save(path)
    loaded = Gallery.load(path)
    assert_same_entries(gallery, loaded)
    assert loaded.meta([0, 3, 5]) == [{"frame": 0}, {"frame": 3}, None]
    new = loaded.add(people([9], "ir", seed=3), pids=[9], camids=[1])
    assert list(new) == [7]                               # ids keep counting after a reload
    assert not list(tmp_path.glob(".*.tmp"))              # no temporary file left behind


def test_corrupt_truncated_or_foreign_files_raise(gallery, tmp_path):
    path = tmp_path / "g.ssftg"
    gallery.save(path)
    data = path.read_bytes()
    cases = {
        "flipped": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "foreign": b"PK\x03\x04 this is a zip file, not a gallery" * 10,
        "header-only": data[:40],
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.ssftg"
        bad.write_bytes(blob)
        with pytest.raises(GalleryError):
            Gallery.load(bad)
    with pytest.raises(GalleryError):
        Gallery.load(tmp_path / "missing.ssftg")
    assert data.startswith(MAGIC)


WRITER = textwrap.dedent("""
    import os, sys, numpy as np
    sys.path.insert(0, {root!r})
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import Gallery
    n, path, hold = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "hold"
    rng = np.random.default_rng(0)
    g = Gallery()
    g.add(Features(rng.standard_normal((n, 256)), rng.standard_normal((n, 256)), 0),
          pids=np.arange(n), camids=1)
    if hold:  # stop for good inside the save, after the data was written but before the rename
        real = os.fsync
        def fsync(fd):
            print("in-save", flush=True)
            import time; time.sleep(60)
        os.fsync = fsync
    print("saving", flush=True)
    while True:
        g.save(path)
        if hold:
            break
""")


@pytest.mark.parametrize("how", ["hold", "loop"])
def test_killed_writer_leaves_previous_gallery_intact(gallery, tmp_path, how):
    path = tmp_path / "g.ssftg"
    gallery.save(path)
    before = path.read_bytes()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), "60000", str(path), how],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        if how == "hold":
            assert proc.stdout.readline().strip() == "in-save"
        else:                                         # kill while the temporary file grows
            deadline = time.monotonic() + 60
            while not any(p.stat().st_size > 0 for p in tmp_path.glob(".g.ssftg.*.tmp")):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    loaded = Gallery.load(path)                       # never a partial file
    if how == "hold":
        assert path.read_bytes() == before and len(loaded) == len(gallery)
    else:
        killed_mid_write = bool(list(tmp_path.glob(".g.ssftg.*.tmp")))
        assert len(loaded) == len(gallery) if killed_mid_write else len(loaded) in (7, 60000)


def test_concurrent_adds_and_searches(gallery):
    errors = []

    def writer(seed):
        try:
            for i in range(20):
                gallery.add(people([seed], "rgb", seed=seed * 100 + i), pids=[seed], camids=[0])
        except Exception as exc:  # noqa: BLE001 (collected and reported below)
            errors.append(exc)

    def reader():
        try:
            for _ in range(20):
                for r in gallery.search(people([2], "ir", seed=9), top=50):
                    assert len(r.pids) == len(set(r.pids))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (10, 11, 12)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _, cols = gallery.entries()
    assert len(gallery) == 67 and len(set(cols["ids"])) == 67
