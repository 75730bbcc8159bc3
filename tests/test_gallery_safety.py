"""Gallery.save targets and identity ids (issue 15 item 5): never replace a non-file, always a
GalleryError, and ids validated instead of coerced."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.gallery import Gallery
from tests.test_gallery import people

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gallery():
    g = Gallery()
    g.add(people([1, 2, 3], "rgb", seed=0), pids=[1, 2, 3], camids=1)
    return g


def test_save_to_a_folder_or_missing_parent_is_a_gallery_error(gallery, tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(GalleryError, match="folder"):
        gallery.save(tmp_path / "dir")
    assert (tmp_path / "dir").is_dir()
    with pytest.raises(GalleryError, match="does not exist"):
        gallery.save(tmp_path / "missing" / "g.bin")
    assert not (tmp_path / "missing").exists()


def _special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to("/dev/null")
    out = {"fifo": fifo, "symlink to a device": link}
    try:   # a char device of /dev/full's numbers, made here (never touch the real one)
        dev = tmp_path / "full"
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        out["device"] = dev
    except PermissionError:
        pass
    return out


def test_save_never_replaces_a_device_fifo_or_link(gallery, tmp_path):
    for name, path in _special_files(tmp_path).items():
        before = os.lstat(path)
        with pytest.raises(GalleryError, match="not a regular file"):
            gallery.save(path)
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), name
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_to_dev_full_is_refused():
    mode = os.lstat("/dev/full").st_mode
    with pytest.raises(GalleryError):
        Gallery().save("/dev/full")
    assert os.lstat("/dev/full").st_mode == mode and stat.S_ISCHR(mode)


READ_ONLY = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from ssft_deploy.errors import GalleryError
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import Gallery
    g = Gallery(); g.add(Features([[1.0, 2.0]], [[3.0]], 0), pids=[1], camids=[1])
    if os.geteuid() == 0:          # root ignores permission bits: drop to nobody
        os.setgid(65534); os.setuid(65534)
    try:
        g.save(sys.argv[1])
    except GalleryError as exc:
        print("GalleryError", exc)
    else:
        print("saved")
""")


def test_save_into_a_read_only_folder_is_a_gallery_error(tmp_path):
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"ssft-ro-{os.getpid()}"
    folder.mkdir(mode=0o755)
    try:
        (folder / "g.bin").write_bytes(b"old")
        os.chmod(folder / "g.bin", 0o644)
        os.chmod(folder, 0o555)
        script = tmp_path / "ro.py"
        script.write_text(READ_ONLY.format(root=str(ROOT)))
        os.chmod(tmp_path, 0o755)
        os.chmod(script, 0o644)
        out = subprocess.run([sys.executable, str(script), str(folder / "g.bin")],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.stdout.startswith("GalleryError"), out.stdout + out.stderr
        assert "Traceback" not in out.stdout
        assert (folder / "g.bin").read_bytes() == b"old"
    finally:
        os.chmod(folder, 0o755)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_remove_refuses_fractional_ids(gallery):
    for bad in ([1.7], [1.0], 1.2, [True], ["1"]):
        with pytest.raises(InputError):
            gallery.remove(pids=bad)
    assert len(gallery) == 3 and 1 in gallery.entries()[1]["pids"]     # pid 1 still there
    with pytest.raises(InputError):
        gallery.remove(entry_ids=[0.0])
    assert gallery.remove(pids=np.array([1], np.uint8)) == 1


def test_out_of_range_ids_are_refused_not_wrapped(gallery):
    big = np.array([2**64 - 1], np.uint64)
    for kwargs in ({"pids": big}, {"pids": [2**64 - 1]}, {"camids": [2**63]}, {"pids": [2**70]},
                   {"tracks": big}):
        args = {"pids": [9], "camids": [1], **kwargs}
        with pytest.raises(InputError, match="int64|integers"):
            gallery.add(people([9], "rgb", seed=1), **args)
    assert len(gallery) == 3 and -1 not in gallery.entries()[1]["pids"]
    with pytest.raises(InputError):
        gallery.remove(pids=big)
    ok = gallery.add(people([9], "rgb", seed=1), pids=np.array([2**63 - 1], np.uint64), camids=1)
    assert gallery.entries()[1]["pids"][-1] == 2**63 - 1 and len(ok) == 1
    with pytest.raises(InputError):
        gallery.add(people([9], "rgb", seed=1), pids=[1.5], camids=1)
