"""Preprocessing: normalisation values, grey crops, box clipping, per-item errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.preprocess import MEAN, STD, Preprocessor, clip_box

PRE = Preprocessor(input_size=(16, 8))


def _expected(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array([(rgb[c] / 255.0 - MEAN[c]) / STD[c] for c in range(3)], np.float32)


def test_constant_bgr_crop_is_rgb_normalised():
    crop = np.zeros((40, 20, 3), np.uint8)
    crop[:] = (10, 20, 30)  # BGR
    batch = PRE.crops([crop])
    assert batch.array.shape == (1, 3, 16, 8) and batch.array.dtype == np.float32
    assert batch.array.flags.c_contiguous
    np.testing.assert_allclose(batch.array[0, :, 5, 3], _expected((30, 20, 10)), atol=1e-5)
    assert batch.ok_indices.tolist() == [0] and batch.errors == {}


@pytest.mark.parametrize("shape", [(30, 12), (30, 12, 1)])
def test_grey_ir_crop_becomes_three_channels(shape):
    crop = np.full(shape, 100, np.uint8)
    out = PRE.one(crop)
    assert out.shape == (3, 16, 8)
    np.testing.assert_allclose(out[:, 0, 0], _expected((100, 100, 100)), atol=1e-5)


def test_resize_matches_opencv_linear():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (37, 19, 3), dtype=np.uint8)
    ref = cv2.resize(crop[:, :, ::-1].copy(), (8, 16), interpolation=cv2.INTER_LINEAR)
    ref = (ref.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(PRE.one(crop), ref.transpose(2, 0, 1), atol=1e-5)


def test_paths_with_corrupt_and_missing_files(tmp_path):
    good = np.zeros((20, 10, 3), np.uint8)
    good[:] = (0, 0, 255)  # red in BGR
    cv2.imwrite(str(tmp_path / "a.png"), good)
    cv2.imwrite(str(tmp_path / "ir.png"), np.full((20, 10), 50, np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    items = [tmp_path / "a.png", tmp_path / "bad.jpg", str(tmp_path / "ir.png"),
             tmp_path / "missing.png", np.zeros((5, 5, 3), np.float32)]
    batch = PRE.crops(items)
    assert batch.ok_indices.tolist() == [0, 2]
    assert sorted(batch.errors) == [1, 3, 4]
    assert all(isinstance(e, InputError) for e in batch.errors.values())
    assert "uint8" in str(batch.errors[4])
    np.testing.assert_allclose(batch.array[0, :, 0, 0], _expected((255, 0, 0)), atol=1e-5)
    np.testing.assert_allclose(batch.array[1, :, 0, 0], _expected((50, 50, 50)), atol=1e-5)
    with pytest.raises(InputError, match="3 of 5 items failed"):
        batch.raise_errors()


def test_clip_box():
    assert clip_box((-5, -3, 20, 10), 30, 40) == (0, 0, 15, 7)
    assert clip_box((25, 30, 20, 20), 30, 40) == (25, 30, 30, 40)
    for bad in [(5, 5, 0, 10), (5, 5, 10, -3), (40, 0, 5, 5), (0, 0, 1, 1),
                (0, float("nan"), 5, 5), (1, 2, 3)]:
        with pytest.raises(InputError):
            clip_box(bad, 30, 40)


def test_frame_boxes_clip_and_report_bad_boxes():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    boxes = [(-5, -3, 20, 10), (5, 5, 0, 10), (25, 30, 20, 20), (100, 100, 5, 5)]
    batch = PRE.boxes(frame, boxes)
    assert batch.ok_indices.tolist() == [0, 2] and sorted(batch.errors) == [1, 3]
    np.testing.assert_allclose(batch.array[0], PRE.one(frame[0:7, 0:15].copy()), atol=1e-6)
    np.testing.assert_allclose(batch.array[1], PRE.one(frame[30:40, 25:30].copy()), atol=1e-6)


def test_bad_frame_fails_the_call_and_empty_batch_has_shape():
    with pytest.raises(InputError):
        PRE.boxes(np.zeros((10, 10, 3), np.float32), [(0, 0, 5, 5)])
    batch = PRE.crops([])
    assert batch.array.shape == (0, 3, 16, 8) and batch.ok_indices.size == 0
