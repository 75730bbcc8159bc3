"""One frame contract (issue 15 item 4): both extraction paths take BGR, grey and 16-bit frames."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.batcher import FrameBatcher
from ssft_deploy.errors import InputError
from ssft_deploy.frames import Stretch, to_bgr, to_uint8

BOXES = [(2, 4, 12, 24), (20, 8, 10, 20)]


def thermal(h=40, w=48, seed=0) -> np.ndarray:
    """A radiometric-looking frame: ~29000-30500 counts, a warm 'person' block."""
    rng = np.random.default_rng(seed)
    f = rng.integers(29000, 29400, (h, w)).astype(np.uint16)
    f[4:28, 2:14] += 1000
    return f


def test_stretch_maps_the_window_linearly():
    raw = np.array([[0, 100], [200, 300]], np.uint16)
    out = Stretch("fixed", 100, 300).apply(raw)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0], [128, 255]]
    pct = Stretch("percentile", 0, 100).apply(raw)
    assert pct.tolist() == [[0, 85], [170, 255]]
    assert Stretch().apply(np.full((8, 8), 7, np.uint16)).max() == 0     # flat frame: no NaN


def test_stretch_parse_and_errors():
    assert Stretch.parse("fixed:27315:31315") == Stretch("fixed", 27315, 31315)
    assert Stretch.parse("percentile:2:98") == Stretch("percentile", 2, 98)
    assert Stretch.parse(None) == Stretch()
    for bad in ("fixed:5", "fixed:9:1", "percentile:0:101", "gamma", "fixed:a:b"):
        with pytest.raises(InputError):
            Stretch.parse(bad)


@pytest.mark.parametrize("frame, shape", [
    (np.zeros((6, 5, 3), np.uint8), (6, 5, 3)),
    (np.zeros((6, 5), np.uint8), (6, 5)),
    (np.zeros((6, 5, 1), np.uint8), (6, 5)),
    (np.zeros((6, 5, 4), np.uint8), (6, 5, 4)),
    (np.zeros((6, 5), np.uint16), (6, 5)),
    (np.zeros((6, 5, 1), np.uint16), (6, 5)),
    (np.full((6, 5), 300.0, np.float32), (6, 5)),
])
def test_accepted_frames(frame, shape):
    out = to_uint8(frame)
    assert out.dtype == np.uint8 and out.shape == shape
    assert to_bgr(frame).shape == (6, 5, 3)


@pytest.mark.parametrize("frame, match", [
    (np.zeros((6, 5), np.int32), "uint16 or float"),
    (np.zeros((6, 5, 2), np.uint8), "HxW, HxWx1"),
    (np.zeros((1, 5), np.uint8), "at least 2x2"),
    (np.full((6, 5), np.nan, np.float32), "NaN"),
    ("frame.png", "numpy array"),
])
def test_refused_frames_say_what_is_accepted(frame, match):
    with pytest.raises(InputError, match=match):
        to_uint8(frame)


def _submit(rt, frame, stretch=None):
    with FrameBatcher.for_runtime(rt, max_batch=4) as b:
        futs = b.submit_boxes(frame, BOXES, "cam", "ir", stretch=stretch)
        return [f.result(timeout=30) for f in futs]


def test_batcher_takes_grey_frames_like_extract_boxes(tiny_runtime):
    # Before: submit_boxes failed every box with "a frame must be HxWxC" for a grey frame that
    # extract_boxes accepted.
    grey = np.random.default_rng(1).integers(0, 255, (40, 48), dtype=np.uint8)
    direct = tiny_runtime.extract_boxes(grey, BOXES, "ir")
    batched = _submit(tiny_runtime, grey)
    np.testing.assert_allclose(np.stack([r.shared for r in batched]), direct.shared, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("stretch", [None, "fixed:29000:30500"])
def test_16bit_frames_on_both_paths_match_the_documented_stretch(tiny_runtime, stretch):
    # Before: extract_boxes raised "a crop must be uint8, got uint16" and submit_boxes failed
    # every box; now both paths stretch the whole frame, then crop.
    raw = thermal()
    expected = tiny_runtime.extract_boxes(Stretch.parse(stretch).apply(raw), BOXES, "ir")
    direct = tiny_runtime.extract_boxes(raw, BOXES, "ir", stretch=stretch)
    batched = _submit(tiny_runtime, raw, stretch)
    np.testing.assert_allclose(direct.shared, expected.shared, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack([r.shared for r in batched]), expected.shared,
                               rtol=1e-5, atol=1e-6)


def test_bad_frame_fails_each_future_on_the_batcher_and_raises_on_the_runtime(tiny_runtime):
    bad = np.zeros((40, 48), np.int32)
    with FrameBatcher.for_runtime(tiny_runtime, max_batch=4) as b:
        futs = b.submit_boxes(bad, BOXES, "cam", "rgb")
        for f in futs:
            with pytest.raises(InputError, match="uint16 or float"):
                f.result(timeout=5)
    with pytest.raises(InputError, match="uint16 or float"):
        tiny_runtime.extract_boxes(bad, BOXES, "rgb")


def test_border_and_zero_area_boxes_fail_alone_on_grey_frames(tiny_runtime):
    grey = np.full((40, 48), 90, np.uint8)
    boxes = [(-5, -5, 12, 24), (40, 30, 20, 20), (10, 10, 0, 0), (60, 60, 5, 5)]
    with FrameBatcher.for_runtime(tiny_runtime, max_batch=4) as b:
        futs = b.submit_boxes(grey, boxes, "cam", "ir")
        assert futs[0].result(timeout=30).shared.shape[0] > 0      # clipped to the frame
        assert futs[1].result(timeout=30).shared.shape[0] > 0
        for f in futs[2:]:
            with pytest.raises(InputError, match="degenerate|outside|empty"):
                f.result(timeout=5)
