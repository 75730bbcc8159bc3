"""Many writers, nothing lost (issues 13 and 21): three processes add and remove entries in one
store while another process searches; the final count is adds minus removes and no search
raises. On the local store's multi-process mode and on the session's real Milvus server (Milvus
Lite admits one process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ssft_deploy.gallery import open_gallery

pytest.importorskip("faiss", reason="the local store's k-NN needs faiss (pip install faiss-cpu)")
ROOT = Path(__file__).resolve().parents[1]
DIMS = (16, 8)

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import open_gallery
    import json
    path, wid, rounds, opts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    g = open_gallery(path, {dims!r}, **json.loads(opts))
    rng = np.random.default_rng(wid)
    adds = removes = 0
    for r in range(rounds):
        n = 3
        ids = wid * 100000 + r * 10 + np.arange(n)
        f = Features(rng.standard_normal((n, {ds})), rng.standard_normal((n, {dp})), r % 2)
        g.add(f, pids=ids % 50, camids=wid, entry_ids=ids)
        g.add(f, pids=ids % 50, camids=wid, entry_ids=ids)      # a retried batch: idempotent
        adds += n
        if r % 3 == 2:
            removes += g.remove(entry_ids=ids[:2])
    print(adds, removes, flush=True)
""")

SEARCHER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import open_gallery
    import json
    path, stop, opts = sys.argv[1], sys.argv[2], sys.argv[3]
    g = open_gallery(path, {dims!r}, **json.loads(opts))
    rng = np.random.default_rng(99)
    searches = 0
    import os
    while not os.path.exists(stop) or searches < 5:
        q = Features(rng.standard_normal((2, {ds})), rng.standard_normal((2, {dp})), [0, 1])
        if len(g):
            g.search(q, top=5, shortlist=4)
            g.search(q, top=5)
        searches += 1
    print(searches, flush=True)
""")


@pytest.mark.parametrize("kind", ["local", pytest.param("server",
                                                          marks=pytest.mark.milvus_server)])
def test_writers_and_a_searcher_share_one_store(kind, request, tmp_path):
    if kind == "server":
        path, opts = request.getfixturevalue("milvus_server").uri, {
            "collection": f"t{uuid.uuid4().hex[:16]}"}
    else:
        path, opts = str(tmp_path / "shared.gallery"), {}
    rounds = 6 if kind == "server" else 12                   # every third round removes two
    created = open_gallery(path, DIMS, **opts)               # create it once
    fmt = {"root": str(ROOT), "dims": DIMS, "ds": DIMS[0], "dp": DIMS[1]}
    (tmp_path / "w.py").write_text(WRITER.format(**fmt))
    (tmp_path / "s.py").write_text(SEARCHER.format(**fmt))
    stop = tmp_path / "stop"
    searcher = subprocess.Popen([sys.executable, str(tmp_path / "s.py"), path, str(stop),
                                 json.dumps(opts)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, str(tmp_path / "w.py"), path, str(i), str(rounds),
                                 json.dumps(opts)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(1, 4)]
    adds = removes = 0
    try:
        for w in writers:
            out, err = w.communicate(timeout=300)
            assert w.returncode == 0, err                   # no write raised
            a, r = map(int, out.split())
            adds, removes = adds + a, removes + r
        stop.touch()
        out, err = searcher.communicate(timeout=300)
        assert searcher.returncode == 0, err               # no search raised
        assert int(out) >= 5
        assert removes == 3 * (rounds // 3) * 2
        with open_gallery(path, DIMS, **opts) as fresh:
            assert len(fresh) == adds - removes
    finally:
        for p in [searcher, *writers]:
            if p.poll() is None:
                p.kill()
        if kind == "server":
            created._client.drop_collection(opts["collection"])
        created.close()


KILLED = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import open_gallery
    from ssft_deploy.gallery import fileio
    g = open_gallery(sys.argv[1], {dims!r})
    rng = np.random.default_rng(1)
    def stop(fh):                        # stop for good inside the write
        fh.flush()
        print("in-write", flush=True)
        time.sleep(60)
    if sys.argv[2] == "torn":            # half of the record is in the file
        def append(path, end, pieces):
            data = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
            with open(path, "r+b") as fh:
                fh.seek(end)
                fh.write(data[:len(data) // 2])
                stop(fh)
        fileio.append = append
    else:                                # the whole record, not yet fsynced
        os.fsync = lambda fd: stop(open(os.devnull, "w"))
    g.add(Features(rng.standard_normal((50, {ds})), rng.standard_normal((50, {dp})), 0),
          pids=np.arange(50), camids=1)
""")


@pytest.mark.parametrize("when", ["torn", "before-fsync"])
def test_a_writer_killed_mid_batch_leaves_none_of_it(tmp_path, when):
    import os
    import signal

    import numpy as np

    from ssft_deploy.features import Features

    path = tmp_path / "g.gallery"
    g = open_gallery(path, DIMS)
    rng = np.random.default_rng(0)
    g.add(Features(rng.standard_normal((5, 16)), rng.standard_normal((5, 8)), 1), pids=np.arange(5),
          camids=1)
    script = tmp_path / "k.py"
    script.write_text(KILLED.format(root=str(ROOT), dims=DIMS, ds=DIMS[0], dp=DIMS[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(path), when],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in-write"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    again = open_gallery(path, DIMS)                         # the lock died with the writer
    # a torn record is none of the batch; a whole one (killed in its fsync) may be all of it
    before = 5 if when == "torn" else len(again)
    assert before in (5, 55) and len(again) == before and len(g) == before
    again.add(Features(rng.standard_normal((1, 16)), rng.standard_normal((1, 8)), 0), pids=[9],
              camids=1)                                      # cuts the torn tail off first
    assert len(g) == before + 1                              # the other handle sees the write
    assert len(open_gallery(path, DIMS)) == before + 1
