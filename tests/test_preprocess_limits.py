"""Decompression bombs: an image's pixel count is checked from its header before decoding; an
oversized file fails its own item (InputError), the rest of the batch is kept."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssft_deploy.batcher import FrameBatcher
from ssft_deploy.datasets.images import MAX_PIXELS_ENV, read_image
from ssft_deploy.errors import InputError
from ssft_deploy.preprocess import Preprocessor

PRE = Preprocessor(input_size=(16, 8))
REPO = Path(__file__).resolve().parents[1]


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit black PNG of ``width x height``: 40000^2 is 194 KB, 20000^2 is 48 KB (and
    decodes to 2.4 GB of BGR + RGB)."""
    row, z = bytes(1 + (width + 7) // 8), zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                      1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    cv2.imwrite(str(d / "good.png"), np.full((24, 12, 3), 80, np.uint8))
    return {"good": d / "good.png", "huge": png_bomb(d / "huge.png", 40000, 40000),
            "inflate": png_bomb(d / "inflate.png", 20000, 20000)}


def test_bomb_files_are_the_reported_sizes(files):
    assert 150_000 < files["huge"].stat().st_size < 250_000
    assert files["inflate"].stat().st_size < 60_000


def test_oversized_image_fails_its_item_and_keeps_the_batch(files):
    # today: a raw cv2.error from imdecode fails the whole call
    batch = PRE.crops([files["good"], files["huge"], np.zeros((9, 5, 3), np.uint8)])
    assert batch.ok_indices.tolist() == [0, 2]
    err = batch.errors[1]
    assert isinstance(err, InputError)
    assert "over the limit" in str(err) and "huge.png" in str(err) and "max_pixels" in str(err)


def test_inflating_png_is_refused_without_decoding(files):
    """Run under a 1 GiB address-space cap: decoding 20000x20000 pixels (1.2 GB BGR) cannot
    happen there, so only a header check can answer InputError (today: cv2 out of memory)."""
    code = textwrap.dedent(f"""
        import resource, sys
        from ssft_deploy.datasets.images import read_image
        from ssft_deploy.errors import InputError
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        try:
            read_image({str(files["inflate"])!r})
        except InputError as exc:
            print("InputError:", exc)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         timeout=120, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "InputError:" in res.stdout and "over the limit of 50000000" in res.stdout


def test_limit_is_configurable(files, monkeypatch, tmp_path):
    assert read_image(files["good"]).shape == (24, 12, 3)
    big = png_bomb(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(InputError, match="8000x8000 = 64000000 pixels, over the limit of 50000000"):
        read_image(big)
    assert read_image(big, max_pixels=64_000_000).shape == (8000, 8000, 3)
    with pytest.raises(InputError, match="288 pixels, over the limit of 100"):
        read_image(files["good"], max_pixels=100)
    small = Preprocessor(input_size=(16, 8), max_pixels=100).crops([files["good"]])
    assert list(small.errors) == [0]
    monkeypatch.setenv(MAX_PIXELS_ENV, "200")
    assert list(PRE.crops([files["good"]]).errors) == [0]
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match=MAX_PIXELS_ENV):
        read_image(files["good"])
    monkeypatch.delenv(MAX_PIXELS_ENV)
    with pytest.raises(InputError, match="positive"):
        read_image(files["good"], max_pixels=0)


def test_runtime_and_batcher_paths_keep_the_good_items(files, tiny_runtime):
    ex = tiny_runtime.extract_batch([files["huge"], files["good"], files["inflate"]], "ir")
    assert ex.ok_indices.tolist() == [1] and sorted(ex.errors) == [0, 2]
    assert all(isinstance(e, InputError) for e in ex.errors.values())
    want = tiny_runtime.extract([files["good"]], "ir")
    with FrameBatcher.for_runtime(tiny_runtime, max_batch=4, max_wait_ms=5) as b:
        futs = [b.submit(p, modality="ir") for p in (files["huge"], files["good"])]
        assert isinstance(futs[0].exception(timeout=10), InputError)
        np.testing.assert_allclose(futs[1].result(timeout=10).shared, want.shared[0],
                                   rtol=1e-5, atol=1e-6)
