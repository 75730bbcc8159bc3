"""Files keep what their owner set (issue 20 item 3): a durable write keeps the target's mode,
a new file honours the umask, and a caller that needs a private file asks for it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssft_deploy.features import Features
from ssft_deploy.fileio import current_umask, durable_write
from ssft_deploy.gallery import open_gallery

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_durable_write_keeps_the_targets_mode(tmp_path):
    target = tmp_path / "shared.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    durable_write(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o644
    os.chmod(target, 0o640)
    durable_write(target, lambda fh: fh.write(b"newer"))
    assert _mode(target) == 0o640


def test_a_new_file_honours_the_umask(tmp_path):
    code = ("import os, stat, sys; sys.path.insert(0, sys.argv[1]); os.umask(0o027); "
            "from ssft_deploy.fileio import durable_write, current_umask; "
            "p = durable_write(sys.argv[2], b'x'); "
            "print(oct(stat.S_IMODE(os.stat(p).st_mode)), oct(current_umask()))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path / "new.bin")],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["0o640", "0o27"]


def test_umask_is_read_without_changing_it():
    before = os.umask(0o022)
    os.umask(before)
    assert current_umask() == before
    assert os.umask(before) == before  # still what it was


def test_an_explicit_mode_makes_a_private_file(tmp_path):
    target = tmp_path / "token"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    durable_write(target, b"secret", mode=0o600)
    assert _mode(target) == 0o600


def test_chmod_644_gallery_survives_an_add(tmp_path):
    pytest.importorskip("faiss")
    path = tmp_path / "g.gallery"
    rng = np.random.default_rng(0)
    g = open_gallery(path, (4, 3))
    g.add(Features(rng.standard_normal((2, 4)), rng.standard_normal((2, 3)), 0), pids=[1, 2],
          camids=1)
    os.chmod(path, 0o644)
    g.add(Features(rng.standard_normal((2, 4)), rng.standard_normal((2, 3)), 1), pids=[1, 2],
          camids=3)
    g.compact()  # a rewrite (a new file) too keeps the mode
    assert _mode(path) == 0o644
    assert len(open_gallery(path, (4, 3))) == 4
    assert _mode(path) == 0o644
