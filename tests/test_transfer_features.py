"""Features: validation (InputError), concat, take, modality helpers."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.features import Features, modality_code


def test_conversion_and_helpers():
    f = Features(np.arange(12).reshape(4, 3), np.ones((4, 2), np.float64), [0, 1, 1, 0])
    assert f.shared.dtype == np.float32 and f.specific.dtype == np.float32
    assert f.modality.dtype == np.int64 and len(f) == 4 and f.dims == (3, 2)
    assert list(f.of_modality("ir")) == [1, 2] and list(f.of_modality(0)) == [0, 3]
    g = Features(np.zeros((2, 3)), np.zeros((2, 2)), "ir")
    assert list(g.modality) == [1, 1]
    both = Features.concat([f, g])
    assert len(both) == 6 and list(both.modality) == [0, 1, 1, 0, 1, 1]
    np.testing.assert_array_equal(both.take([4, 0]).shared, [[0, 0, 0], [0, 1, 2]])
    np.testing.assert_array_equal(f.take(f.modality == 1).shared[:, 0], [3, 6])
    assert len(f.take(slice(1, 3))) == 2 and len(Features.empty(3, 2)) == 0
    assert modality_code("RGB") == 0 and modality_code("thermal") == 1 and modality_code(1) == 1


@pytest.mark.parametrize("bad", [
    lambda: Features(np.zeros(3), np.zeros((3, 2)), 0),                       # 1-D shared
    lambda: Features(np.zeros((3, 2)), np.zeros((2, 2)), 0),                  # row mismatch
    lambda: Features(np.zeros((3, 2)), np.zeros((3, 2)), [0, 1]),            # short modality
    lambda: Features(np.zeros((3, 2)), np.zeros((3, 2)), [0, 1, 2]),          # unknown code
    lambda: Features(np.zeros((3, 2)), np.zeros((3, 2)), [0.0, 1.0, 1.0]),    # float codes
    lambda: Features(np.full((3, 2), np.inf), np.zeros((3, 2)), 0),           # not finite
    lambda: Features(np.array([["a", "b"]] * 3), np.zeros((3, 2)), 0),        # not numbers
    lambda: Features(np.zeros((3, 2)), np.zeros((3, 2)), "uv"),               # unknown name
    lambda: Features.concat([Features.empty(3, 2), Features.empty(4, 2)]),    # dims differ
    lambda: Features.concat([]),
    lambda: Features.empty(3, 2).take([0]),                                   # out of range
])
def test_bad_input_raises_input_error(bad):
    with pytest.raises(InputError):
        bad()
