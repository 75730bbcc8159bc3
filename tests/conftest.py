"""Shared pytest fixtures. Keep the suite fast: 2 CPU cores, no GPU."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A 16x8 ONNX bundle from ``tests/bundle_factory.py`` (no trained model needed)."""
    from tests.bundle_factory import make_bundle

    return make_bundle(tmp_path_factory.mktemp("tiny") / "bundle", input_size=(16, 8))


@pytest.fixture(scope="module")
def tiny_runtime(tiny_bundle):
    """``ReIDRuntime`` over ``tiny_bundle`` on ONNX Runtime CPU."""
    from ssft_deploy.runtime import ReIDRuntime

    rt = ReIDRuntime.open(tiny_bundle, backend="ort-cpu")
    yield rt
    rt.close()
