"""PyTriton server on loopback: features over tritonclient (http) equal the in-process ones."""

from __future__ import annotations

import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ssft_deploy.serving.launch import TritonServerProcess, libdir_of, unavailable_reason
from ssft_deploy.serving.pytriton_server import MODEL_NAMES, ensure_libpython_path
from tests.test_bundle_factory import make_bundle, reference_extract

httpclient = pytest.importorskip("tritonclient.http")

REASON = unavailable_reason()
needs_triton = pytest.mark.skipif(REASON is not None, reason=f"PyTriton environment: {REASON}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("serving") / "bundle", input_size=(16, 8))


@pytest.fixture(scope="module")
def server(bundle):
    srv = TritonServerProcess(bundle, max_batch=8, queue_delay_us=20000, start_timeout_s=180)
    with srv:
        yield srv
    assert srv.proc.returncode is not None


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 8)).astype(np.float32)


def infer(url: str, modality: str, x: np.ndarray) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url=url)
    try:
        inp = httpclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outs = [httpclient.InferRequestedOutput(n) for n in ("shared", "specific")]
        res = client.infer(MODEL_NAMES[modality], [inp], outputs=outs)
        return {n: res.as_numpy(n) for n in ("shared", "specific")}
    finally:
        client.close()


def test_ld_library_path_puts_this_python_first():
    env = {"LD_LIBRARY_PATH": "/usr/lib:/opt/x"}
    ensure_libpython_path(env)
    want = [libdir_of(Path(sys.executable)), "/usr/lib", "/opt/x"]
    assert env["LD_LIBRARY_PATH"].split(":") == want
    ensure_libpython_path(env)                      # idempotent
    assert env["LD_LIBRARY_PATH"].split(":") == want


@needs_triton
def test_served_features_equal_in_process(server, bundle):
    from ssft_deploy.serving.extractors import BundleExtractor

    local = BundleExtractor(bundle, backend="ort-cpu")
    try:
        for modality, seed in (("rgb", 1), ("ir", 2)):
            x = images(3, seed)
            got = infer(server.url, modality, x)
            want_s, want_p = local(x, modality)
            np.testing.assert_allclose(got["shared"], want_s, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["specific"], want_p, rtol=1e-5, atol=1e-5)
            ref_s, _ = reference_extract(x, f"extractor_{modality}")
            np.testing.assert_allclose(got["shared"], ref_s, rtol=1e-4, atol=1e-4)
        # concurrent single-image requests go through Triton's dynamic batcher, rows stay theirs
        xs = images(12, 3)
        with ThreadPoolExecutor(12) as pool:
            outs = list(pool.map(lambda i: infer(server.url, "ir", xs[i:i + 1]), range(12)))
        want_s, _ = local(xs, "ir")
        np.testing.assert_allclose(np.concatenate([o["shared"] for o in outs]), want_s,
                                   rtol=1e-5, atol=1e-5)
    finally:
        local.close()


@needs_triton
def test_wrong_input_shape_is_a_clear_client_error(server):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="images"):
        infer(server.url, "rgb", np.zeros((1, 3, 20, 8), np.float32))


@needs_triton
def test_server_stops_and_frees_its_port(server):
    """Runs last in this module: stops the shared server."""
    assert server.proc.poll() is None
    server.stop()
    assert server.proc.returncode is not None
    with pytest.raises(ProcessLookupError):         # tritonserver and stubs are gone too
        os.killpg(server.proc.pid, 0)
    with socket.socket() as s:                      # nothing listens there any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.http_port))
