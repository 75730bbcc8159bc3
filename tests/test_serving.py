"""PyTriton server on loopback: features over tritonclient (http) equal the in-process ones."""

from __future__ import annotations

import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from ssft_deploy.errors import GalleryError
from ssft_deploy.gallery import open_gallery
from ssft_deploy.serving.launch import TritonServerProcess, libdir_of, unavailable_reason
from ssft_deploy.serving.pytriton_server import (
    MODEL_NAMES,
    SEARCH_MODEL,
    ensure_libpython_path,
    load_gallery,
    save_gallery,
)
from tests.bundle_factory import reference_extract

REASON = unavailable_reason()
# `make test` (and so CI) builds .venv-triton: there a missing environment is a failure, not a skip
needs_triton = pytest.mark.skipif(REASON is not None and not os.environ.get("CI"),
                                  reason=f"PyTriton environment: {REASON}")


@pytest.fixture(scope="module")
def gallery_file(tiny_runtime, tmp_path_factory):
    feats = tiny_runtime.extract(list(crops(10, 5)), modality="rgb")
    path = tmp_path_factory.mktemp("gallery") / "gallery.npz"
    save_gallery(path, feats, pids=np.arange(10) % 5, camids=np.arange(10) % 2)
    return path


def test_gallery_file_forms_load_alike(gallery_file, tmp_path):
    g = load_gallery(gallery_file)
    feats, cols = g.entries()
    with np.load(gallery_file) as z:
        np.testing.assert_array_equal(feats.shared, z["shared"])
        np.testing.assert_array_equal(cols["pids"], z["pids"])
        np.testing.assert_array_equal(cols["ids"], np.arange(len(z["pids"])))  # ids = rows
    g.save(tmp_path / "g.bin")
    feats2, cols2 = load_gallery(tmp_path / "g.bin").entries()
    np.testing.assert_array_equal(feats2.shared, feats.shared)
    np.testing.assert_array_equal(feats2.modality, feats.modality)
    for k in ("pids", "camids", "ids"):
        np.testing.assert_array_equal(cols2[k], cols[k])
    (tmp_path / "bad.npz").write_bytes(b"not a gallery")
    with pytest.raises(GalleryError):
        load_gallery(tmp_path / "bad.npz")


@pytest.fixture(scope="module")
def served_gallery(gallery_file, tmp_path_factory):
    """``gallery_file``'s entries as a local store file (``Gallery.save``): the server rereads it
    when another process changes it."""
    path = tmp_path_factory.mktemp("served") / "gallery.bin"
    load_gallery(gallery_file).save(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_bundle, served_gallery):
    srv = TritonServerProcess(tiny_bundle, max_batch=8, queue_delay_us=20000,
                              gallery=served_gallery, top=3, start_timeout_s=180)
    with srv:
        yield srv
    assert srv.proc.returncode is not None


def crops(n: int, seed: int) -> np.ndarray:
    """BGR uint8 person-crop stand-ins of varying content."""
    return np.random.default_rng(seed).integers(0, 256, (n, 24, 12, 3), dtype=np.uint8)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 8)).astype(np.float32)


def infer(url: str, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url=url)
    try:
        feeds = []
        for name, x in inputs.items():
            feeds.append(httpclient.InferInput(name, list(x.shape),
                                               "INT64" if x.dtype == np.int64 else "FP32"))
            feeds[-1].set_data_from_numpy(x)
        res = client.infer(model, feeds)
        return {o["name"]: res.as_numpy(o["name"]) for o in res.get_response()["outputs"]}
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
def test_served_features_equal_in_process_runtime(server, tiny_runtime):
    for modality, seed in (("rgb", 1), ("ir", 2)):
        x = images(3, seed)
        got = infer(server.url, MODEL_NAMES[modality], images=x)
        want_s, want_p = tiny_runtime.extract_array(x, modality)
        np.testing.assert_allclose(got["shared"], want_s, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["specific"], want_p, rtol=1e-5, atol=1e-5)
        ref_s, _ = reference_extract(x, f"extractor_{modality}")
        np.testing.assert_allclose(got["shared"], ref_s, rtol=1e-4, atol=1e-4)
    # concurrent one-image requests go through Triton's dynamic batcher; rows stay their own
    xs = np.stack([tiny_runtime.preprocess_fn(c) for c in crops(12, 3)])
    with ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(lambda i: infer(server.url, "ssft_extract_ir", images=xs[i:i + 1]),
                             range(12)))
    want = tiny_runtime.extract(list(crops(12, 3)), modality="ir")
    np.testing.assert_allclose(np.concatenate([o["shared"] for o in outs]), want.shared,
                               rtol=1e-5, atol=1e-5)
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=server.url)
    with pytest.raises(InferenceServerException, match="restricted"):   # admin API needs a token
        client.get_inference_statistics("ssft_extract_ir")
    stats = client.get_inference_statistics(
        "ssft_extract_ir", headers={"triton-access-token": server.access_token})["model_stats"][0]
    client.close()
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    print(f"\nTriton ssft_extract_ir executions by batch size: {sizes}")
    assert sum(k * v for k, v in sizes.items()) == 12 + 3 and max(sizes) > 1  # batched


@needs_triton
def test_served_search_equals_in_process_search(server, tiny_runtime, gallery_file):
    query = tiny_runtime.extract(list(crops(4, 9)), modality="ir")
    gallery = load_gallery(gallery_file)
    # The tiny bundle's transfer graph reads idx values (absolute rows of one transfer call), so
    # compare calls of the same query sets: all four in one request, then each on its own.
    asked = [(slice(0, 4), infer(server.url, SEARCH_MODEL, shared=query.shared,
                                 specific=query.specific, modality=np.ones((4, 1), np.int64)))]
    for i in range(4):
        asked.append((slice(i, i + 1), infer(
            server.url, SEARCH_MODEL, shared=query.shared[i:i + 1],
            specific=query.specific[i:i + 1], modality=np.array([[1]], np.int64))))
    for part, out in asked:
        want = tiny_runtime.search(query.take(part), top=3, mode="single-query", gallery=gallery)
        assert out["pids"].tolist() == [r.pids.tolist() for r in want]
        assert out["entry_ids"].tolist() == [r.entry_ids.tolist() for r in want]
        np.testing.assert_allclose(out["distances"], [r.distances for r in want],
                                   rtol=1e-4, atol=1e-5)


@needs_triton
def test_wrong_input_shape_is_a_clear_client_error(server):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="images"):
        infer(server.url, "ssft_extract_rgb", images=np.zeros((1, 3, 20, 8), np.float32))


def hostile_search(kind: str, query) -> dict[str, np.ndarray]:
    """One query's search inputs, spoiled as a hostile client would."""
    shared, specific = query.shared[:1].copy(), query.specific[:1].copy()
    modality = np.array([[1]], np.int64)
    if kind == "nan":
        shared[0, 0] = np.nan
    else:
        modality[0, 0] = int(kind)
    return {"shared": shared, "specific": specific, "modality": modality}


def assert_short_client_error(exc: BaseException, *words: str) -> None:
    """A 400 whose message is ours: short, no traceback, no file path."""
    from tritonclient.utils import InferenceServerException

    assert isinstance(exc, InferenceServerException), repr(exc)
    msg = exc.message()
    assert exc.status() == "400", (exc.status(), msg[:300])
    assert len(msg) < 300 and "Traceback" not in msg and ".py" not in msg and "/" not in msg, msg
    assert all(w in msg for w in words), msg


def concurrent_rounds(url: str, model: str, good: list[dict], bad: list[dict], rounds: int):
    """``rounds`` x (one bad + the good requests) sent at once (a barrier releases them
    together, so Triton batches them); -> per round: bad outcome, good outcomes."""
    import threading

    def call(inputs, barrier):
        barrier.wait(10)
        try:
            return infer(url, model, **inputs)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            return exc

    out = []
    with ThreadPoolExecutor(len(good) + 1) as pool:
        for r in range(rounds):
            barrier = threading.Barrier(len(good) + 1)
            futs = [pool.submit(call, bad[r % len(bad)], barrier)]
            futs += [pool.submit(call, g, barrier) for g in good]
            res = [f.result(timeout=60) for f in futs]
            out.append((res[0], res[1:]))
    return out


def batch_sizes(srv, model: str) -> dict[int, int]:
    client = httpclient.InferenceServerClient(url=srv.url)
    try:
        stats = client.get_inference_statistics(
            model, headers={"triton-access-token": srv.access_token})["model_stats"][0]
    finally:
        client.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}


@needs_triton
def test_bad_search_request_fails_alone_in_its_batch(server, tiny_runtime, gallery_file):
    """Modality 2, -7 or a NaN feature batched with seven good queries: the bad one gets its own
    400 with a short message, every good one its answer (20 rounds)."""
    query = tiny_runtime.extract(list(crops(7, 11)), modality="ir")
    _, cols = load_gallery(gallery_file).entries()
    pid_of = dict(zip(cols["ids"].tolist(), cols["pids"].tolist()))
    good = [{"shared": query.shared[i:i + 1], "specific": query.specific[i:i + 1],
             "modality": np.array([[1]], np.int64)} for i in range(7)]
    bad = [hostile_search(k, query) for k in ("2", "-7", "nan")]
    before = sum(batch_sizes(server, SEARCH_MODEL).values())
    for bad_out, good_outs in concurrent_rounds(server.url, SEARCH_MODEL, good, bad, 20):
        assert_short_client_error(bad_out)
        # The tiny bundle's transfer reads absolute row indices, so an answer depends on its
        # batch-mates (test_served_search_equals_in_process_search pins exact answers); here
        # every good request must get a full, self-consistent answer.
        for got in good_outs:
            assert isinstance(got, dict), repr(got)[:2000]
            assert got["error"].tolist() == [[b""]]
            ids, dist = got["entry_ids"][0].tolist(), got["distances"][0]
            assert got["pids"][0].tolist() == [pid_of[i] for i in ids]   # no padding, real ids
            assert np.isfinite(dist).all() and (np.diff(dist) >= 0).all()
    sizes = batch_sizes(server, SEARCH_MODEL)
    print(f"\nssft_search executions by batch size: {sizes}")
    assert max(sizes) > 1 and sum(sizes.values()) > before   # bad and good shared batches


@needs_triton
def test_nan_images_fail_their_request_not_the_batch(server, tiny_runtime):
    xs = np.stack([tiny_runtime.preprocess_fn(c) for c in crops(7, 12)])
    want_s, _ = tiny_runtime.extract_array(xs, "rgb")
    good = [{"images": xs[i:i + 1]} for i in range(7)]
    nan, inf = xs[:1].copy(), xs[:1].copy()
    nan[0, 1, 2, 3], inf[0, 0, 0, 0] = np.nan, np.inf
    for bad_out, good_outs in concurrent_rounds(server.url, MODEL_NAMES["rgb"], good,
                                                [{"images": nan}, {"images": inf}], 20):
        assert_short_client_error(bad_out, "images")
        for i, got in enumerate(good_outs):
            assert isinstance(got, dict), repr(got)[:2000]
            assert np.isfinite(got["shared"]).all()
            np.testing.assert_allclose(got["shared"][0], want_s[i], rtol=1e-5, atol=1e-5)


@needs_triton
def test_served_gallery_follows_its_file(server, tiny_runtime, served_gallery):
    """Runs after the searches above: another process empties the served gallery, then adds two
    people. Today every search of the emptied gallery is HTTP 500, and the server answers from
    the gallery it read at start for ever."""
    q = tiny_runtime.extract(list(crops(1, 13)), modality="ir")

    def ask() -> dict[str, np.ndarray]:
        return infer(server.url, SEARCH_MODEL, shared=q.shared, specific=q.specific,
                     modality=np.ones((1, 1), np.int64))

    writer = open_gallery(served_gallery, tiny_runtime.bundle)
    assert set(ask()["pids"][0].tolist()) <= set(range(5))
    assert writer.remove(pids=range(5)) == 10
    empty = ask()
    assert empty["pids"].tolist() == [[-1] * 3] and np.isinf(empty["distances"]).all()
    ids = writer.add(tiny_runtime.extract(list(crops(2, 14)), modality="rgb"), pids=[40, 41],
                     camids=0)
    out = ask()
    assert sorted(out["pids"][0][:2].tolist()) == [40, 41] and out["pids"][0][2] == -1
    assert sorted(out["entry_ids"][0][:2].tolist()) == sorted(ids.tolist())


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
