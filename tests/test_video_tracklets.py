"""Tracklet aggregation, quality filters, and our extractor as a boxmot-style ReID model."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.video.tracker import BoxmotReID
from ssft_deploy.video.tracklets import Sample, SamplingConfig, Tracklet, check_box


def test_feature_is_the_quality_weighted_mean_of_unit_features():
    t = Tracklet("c", 0, "ir", 1, 0, 0.0)
    rng = np.random.default_rng(0)
    rows = [(rng.normal(size=6), rng.normal(size=4), q) for q in (0.9, 0.3, 0.6)]
    for sh, sp, q in rows:
        t.samples.append(Sample(0, (0, 0, 1, 1), q, "extracted", None, sh, sp))
    t.samples.append(Sample(0, (0, 0, 1, 1), 5.0, "failed", "x"))      # ignored
    f = t.feature()
    q = np.array([r[2] for r in rows])[:, None]
    for got, k in ((f.shared[0], 0), (f.specific[0], 1)):
        unit = np.stack([r[k] / np.linalg.norm(r[k]) for r in rows])
        np.testing.assert_allclose(got, (unit * q).sum(0) / q.sum(), rtol=1e-5)
    assert f.modality.tolist() == [1] and len(t.sample_features()) == 3
    assert Tracklet("c", 0, "rgb", 2, 0, 0.0).feature() is None


@pytest.mark.parametrize("box, reason", [
    ([10, 10, 40, 80], None), ([0, 10, 30, 80], "border"), ([10, 10, 40, 100], "border"),
    ([10, 10, 10, 80], "empty"), ([150, 10, 190, 80], "empty"), ([10, 10, 40, 30], "small"),
    ([10, 10, 90, 50], "aspect"), ([np.nan, 1, 2, 3], "empty"),
])
def test_quality_filters(box, reason):
    assert check_box(np.asarray(box, float), 120, 90, SamplingConfig()) == reason


def test_boxmot_reid_backend(tiny_runtime):
    frame = np.random.default_rng(1).integers(0, 255, (60, 80), dtype=np.uint8)
    model = BoxmotReID(tiny_runtime, "ir")
    xyxy = np.array([[5, 5, 25, 50], [200, 200, 210, 220], [30, 10, 50, 55]], np.float32)
    out = model.get_features(xyxy, frame)
    direct = tiny_runtime.extract_boxes(frame, [(5, 5, 20, 45), (30, 10, 20, 45)], "ir").shared
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(out[[0, 2]], direct, rtol=1e-5, atol=1e-6)
    assert not out[1].any()                       # a box outside the frame: a zero row
    assert model.get_features(np.zeros((0, 4)), frame).shape == (0, out.shape[1])
