"""Serve a bundle's extractors on Triton Inference Server through PyTriton (dynamic batching).

Run inside ``.venv-triton`` (PyTriton pins numpy < 2); ``ssft_deploy.serving.launch`` starts it from
any environment. Models, one per modality so Triton batches each modality on its own:

- ``ssft_extract_rgb`` / ``ssft_extract_ir``: ``images`` float32 ``[3,H,W]`` (the normalised model
  input, ``ssft_deploy.preprocess``) -> ``shared`` float32 ``[Ds]``, ``specific`` float32 ``[Dp]``.
  Non-finite images are that request's 400.
- ``ssft_search`` (with ``--gallery``): a query's ``shared`` ``[Ds]``, ``specific`` ``[Dp]`` and
  ``modality`` ``[1]`` int64 -> the ``top`` best gallery identities of the other modality:
  ``pids`` ``[top]`` int64, ``distances`` ``[top]`` float32, ``entry_ids`` ``[top]`` int64 (the
  gallery entries that gave them; padded with -1 / inf, all padding for an empty gallery).
  Searched in ``single-query`` mode (Eq. 22), so an answer does not depend on which requests
  share a batch. A bad query (modality not 0/1, NaN, features the gallery would refuse to store:
  all zeros or denormal) is that request's 400. A ``Gallery.save`` file is served as the local
  store: another process's changes are searched from the next request on; a ``save_gallery``
  ``.npz`` is read once, at start.

Triton's dynamic batcher stacks concurrent requests into one engine call of up to ``max_batch``;
``ssft_deploy.serving.requests`` checks and answers each request on its own, so a bad request
fails alone with a short message. Every model also has an ``error`` output (empty on success).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from ssft_deploy.errors import GalleryError, InputError, ServingError, SSFTError
from ssft_deploy.serving.lifecycle import STOP_SIGNALS, RunFiles, take_stop_signals
from ssft_deploy.serving.requests import ERROR, RequestBatch, check_finite, finite_outputs
from ssft_deploy.serving.security import (
    PARENT_ENV,
    TOKEN_FILE_ENV,
    check_host,
    check_ports_free,
    read_token_file,
    term_with_parent,
)

if TYPE_CHECKING:
    from ssft_deploy.gallery import Gallery, GalleryStore

MODEL_NAMES = {"rgb": "ssft_extract_rgb", "ir": "ssft_extract_ir"}
SEARCH_MODEL = "ssft_search"
GALLERY_KEYS = ("shared", "specific", "modality", "pids", "camids")
log = logging.getLogger("ssft_deploy.serving")
STOP_REQUESTED = threading.Event()   # set by a stop signal: serving ended because we were asked


def _interrupt(signum: int, _frame: object) -> None:
    """A stop signal: PyTriton's clean stop (it catches KeyboardInterrupt), once; a second
    signal must not interrupt that cleanup (the launcher SIGKILLs a server that hangs)."""
    STOP_REQUESTED.set()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def python_libdir() -> str:
    """The running interpreter's lib dir (where its libpython lives)."""
    return sysconfig.get_config_var("LIBDIR") or os.path.join(sys.base_prefix, "lib")


def ensure_libpython_path(env: dict[str, str] | os._Environ = os.environ) -> None:
    """Put this Python's lib dir first on LD_LIBRARY_PATH (Triton's Python backend stub inherits
    it from us; without it the stub may load the system libpython of another 3.11 build)."""
    libdir = python_libdir()
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])


def install_request_errors() -> bool:
    """Ship ``triton_proxy_model.py`` as every bound model's ``model.py`` (PyTriton's own proxy
    beside it), so a request's ``error`` output becomes its own Triton error. False (and a
    warning: failed requests then answer 200 with the ``error`` output) if PyTriton changed."""
    from pytriton.models.model import Model

    original = Model.get_proxy_model_files
    if getattr(original, "ssft_request_errors", False):
        return True
    shim = Path(__file__).with_name("triton_proxy_model.py").read_bytes()

    def proxy_files(self) -> dict[str, bytes]:
        files = original(self)
        key = f"file:{self.model_version}/model.py"
        files[f"file:{self.model_version}/pytriton_model.py"] = files[key]
        files[key] = shim
        return files

    if "model.py" not in getattr(Model, "SCRIPT_FILES_TO_COPY", ()):
        log.warning("this PyTriton ships no model.py proxy: failed requests answer HTTP 200 with "
                    "their 'error' output set instead of their own 400")
        return False
    proxy_files.ssft_request_errors = True  # type: ignore[attr-defined]
    Model.get_proxy_model_files = proxy_files
    return True


def make_infer_fn(extract: Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]],
                  modality: str) -> Callable:
    """A PyTriton function over requests: stacked valid ``images`` -> ``shared``, ``specific``."""
    def compute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shared, specific = extract(inputs["images"].astype(np.float32, copy=False), modality)
        return {"shared": np.asarray(shared, np.float32),
                "specific": np.asarray(specific, np.float32)}

    return RequestBatch(MODEL_NAMES[modality], compute, check_finite("images"),
                        finite_outputs("shared", "specific"))


def error_tensor():
    from pytriton.model_config import Tensor

    return Tensor(name=ERROR, dtype=bytes, shape=(1,))


def bind_extractors(triton, extract: Callable, input_size: tuple[int, int], dims: dict,
                    max_batch: int, queue_delay_us: int) -> None:
    """Bind one model per modality with Triton dynamic batching."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    h, w = input_size
    for modality, name in MODEL_NAMES.items():
        triton.bind(
            model_name=name,
            infer_func=make_infer_fn(extract, modality),
            inputs=[Tensor(name="images", dtype=np.float32, shape=(3, h, w))],
            outputs=[Tensor(name="shared", dtype=np.float32, shape=(dims["shared"],)),
                     Tensor(name="specific", dtype=np.float32, shape=(dims["specific"],)),
                     error_tensor()],
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
                max_queue_delay_microseconds=queue_delay_us)),
            strict=True,
        )


def save_gallery(path: str | os.PathLike, feats, pids: np.ndarray, camids: np.ndarray) -> None:
    """Write a gallery (Features + pids + camids) as the ``.npz`` the server's --gallery reads."""
    np.savez(path, shared=feats.shared, specific=feats.specific, modality=feats.modality,
             pids=np.asarray(pids, np.int64), camids=np.asarray(camids, np.int64))


def is_gallery_file(path: str | os.PathLike) -> bool:
    """True for a ``Gallery.save`` file, False for anything else (a ``save_gallery`` .npz)."""
    from ssft_deploy.gallery import MAGIC

    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError as exc:
        raise GalleryError(f"cannot read gallery file {path}: {exc}") from exc


def load_gallery(path: str | os.PathLike, binding=None) -> Gallery:
    """A ``Gallery.save`` file or a ``save_gallery`` ``.npz`` (entry ids = its rows) -> Gallery;
    with ``binding`` (the served bundle's), GalleryError for another bundle's gallery."""
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import Gallery

    if is_gallery_file(path):
        return Gallery.load(path, binding)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in GALLERY_KEYS if k not in z.files]
            if missing:
                raise GalleryError(f"gallery file {path} lacks {missing} (write it with "
                                   "ssft_deploy.serving.pytriton_server.save_gallery)")
            arrays = {k: z[k] for k in GALLERY_KEYS}
    except (OSError, ValueError) as exc:
        raise GalleryError(f"cannot read gallery file {path}: {exc}") from exc
    feats = Features(arrays["shared"], arrays["specific"], arrays["modality"])
    gallery = Gallery(*feats.dims)
    if binding is not None:
        gallery.bind(binding)
    gallery.add(feats, arrays["pids"], arrays["camids"])
    return gallery


def open_served_gallery(path: str | os.PathLike, binding) -> GalleryStore:
    """The gallery ``--gallery`` serves: a ``Gallery.save`` file as the local store (it rereads
    the file when another process changed it), a ``save_gallery`` ``.npz`` read once; GalleryError
    for another bundle's gallery."""
    if not is_gallery_file(path):
        return load_gallery(path, binding)
    from ssft_deploy.gallery.local import LocalGallery

    # opened without a binding: a reader never rewrites the file; through a symbolic link, the
    # file it names (the local store writes only to regular files, so writers use that one)
    gallery = LocalGallery(Path(path).resolve())
    gallery.bind(binding)
    return gallery


def query_features(inputs: dict[str, np.ndarray]):
    """A search request's inputs -> Features (InputError: modality not 0/1, NaN, rows the gallery
    would refuse to store, ...)."""
    from ssft_deploy.features import Features
    from ssft_deploy.gallery.base import check_searchable

    modality = inputs["modality"]
    if modality.dtype.kind not in "iu":
        raise InputError(f"modality must be int64 codes, got {modality.dtype}")
    feats = Features(inputs["shared"], inputs["specific"], modality.reshape(-1))
    check_searchable(feats)
    return feats


def make_search_fn(runtime, gallery: GalleryStore, top: int) -> Callable:
    """A PyTriton function over requests: ``runtime.search`` in single-query mode (an empty
    gallery answers padding only: it may be filled later)."""
    def compute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        query = query_features(inputs)
        hits = runtime.search(query, top=top, mode="single-query", gallery=gallery) \
            if len(gallery) else []
        n = len(query)
        pids, ids = np.full((n, top), -1, np.int64), np.full((n, top), -1, np.int64)
        dist = np.full((n, top), np.inf, np.float32)
        for i, r in enumerate(hits):
            got = len(r.pids)
            pids[i, :got], dist[i, :got], ids[i, :got] = r.pids, r.distances, r.entry_ids
        return {"pids": pids, "distances": dist, "entry_ids": ids}

    return RequestBatch(SEARCH_MODEL, compute, query_features,
                        finite_outputs("distances", allow_inf=True))


def bind_search(triton, runtime, gallery: GalleryStore, top: int, max_batch: int,
                queue_delay_us: int) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    dims = runtime.bundle.dims
    triton.bind(
        model_name=SEARCH_MODEL,
        infer_func=make_search_fn(runtime, gallery, top),
        inputs=[Tensor(name="shared", dtype=np.float32, shape=(dims["shared"],)),
                Tensor(name="specific", dtype=np.float32, shape=(dims["specific"],)),
                Tensor(name="modality", dtype=np.int64, shape=(1,))],
        outputs=[Tensor(name="pids", dtype=np.int64, shape=(top,)),
                 Tensor(name="distances", dtype=np.float32, shape=(top,)),
                 Tensor(name="entry_ids", dtype=np.int64, shape=(top,)), error_tensor()],
        config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
            max_queue_delay_microseconds=queue_delay_us)),
        strict=True,
    )


def serve(bundle: str, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, precision: str = "fp32", backend: str = "auto",
          max_batch: int = 32, queue_delay_us: int = 2000, gallery: str | None = None,
          top: int = 10, allow_remote: bool = False) -> None:
    """Open the bundle's runtime, start Triton on ``host`` and serve until SIGINT / SIGTERM /
    SIGHUP (main thread only); ServingError when Triton stops on its own."""
    take_stop_signals(_interrupt)
    since = time.time()
    check_host(host, allow_remote)
    check_ports_free(host, {"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
    token_file = os.environ.get(TOKEN_FILE_ENV)
    token = read_token_file(token_file) if token_file else None
    ensure_libpython_path()
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from ssft_deploy.runtime import ReIDRuntime

    runtime = ReIDRuntime.open(bundle, precision=precision, backend=backend,
                               max_batch=max_batch)
    from ssft_deploy.gallery import bundle_binding

    gal = open_served_gallery(gallery, bundle_binding(runtime.bundle)) if gallery else None
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host,
                          grpc_port=grpc_port, metrics_address=host, metrics_port=metrics_port,
                          exit_timeout_secs=5, log_verbose=0)
    # Statistics, model-repository and other admin endpoints stay behind an access token. Ours
    # arrives as a 0600 file's path (security.py); without one PyTriton draws a random token
    # nobody knows. tritonserver takes it only on its command line (PyTriton puts it there).
    security = TritonSecurityConfig(access_token=token)
    install_request_errors()
    try:
        with Triton(config=config, security_config=security) as triton:
            bind_extractors(triton, runtime.extract_array, runtime.bundle.input_size,
                            runtime.bundle.dims, max_batch, queue_delay_us)
            if gal is not None:
                bind_search(triton, runtime, gal, top, max_batch, queue_delay_us)
            log.warning("ssft serving %s on http://%s:%d (grpc %d)%s", bundle, host,
                        http_port, grpc_port, " with search" if gal is not None else "")
            triton.serve()   # returns on a stop signal, or when tritonserver / a model died
        if not STOP_REQUESTED.is_set():
            raise ServingError("the server stopped unexpectedly: tritonserver or a model process "
                               "exited (see the log above)")
    finally:
        runtime.close()
        # the Python backend's shared memory, left when tritonserver was killed under us
        # (nothing recorded: only our own pytrtion<pid>-* regions)
        RunFiles(os.getpid(), since).cleanup()


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (loopback by default)")
@click.option("--allow-remote", is_flag=True,
              help="allow a non-loopback --host (reachable from other machines)")
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--backend", default="auto", show_default=True)
@click.option("--max-batch", default=32, show_default=True, help="Triton max_batch_size")
@click.option("--queue-delay-us", default=2000, show_default=True,
              help="dynamic batcher: longest wait to fill a batch")
@click.option("--gallery", type=click.Path(exists=True, dir_okay=False), default=None,
              help="gallery file (Gallery.save, or a save_gallery .npz) to serve ssft_search over")
@click.option("--top", default=10, show_default=True, help="identities per search answer")
def main(bundle: str, host: str, allow_remote: bool, http_port: int, grpc_port: int,
         metrics_port: int, precision: str, backend: str, max_batch: int, queue_delay_us: int,
         gallery: str | None, top: int) -> None:
    """Serve BUNDLE's extractors on Triton (run in .venv-triton; see ssft_deploy.serving.launch)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    take_stop_signals(_interrupt)   # before anything: a stop signal may come at once
    if os.environ.get(PARENT_ENV, "").isdigit():
        term_with_parent(int(os.environ[PARENT_ENV]))
    try:
        serve(bundle, host, http_port, grpc_port, metrics_port, precision, backend, max_batch,
              queue_delay_us, gallery, top, allow_remote)
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ImportError as exc:
        click.echo(f"error: {exc}; run the server in the PyTriton environment "
                   "(make triton-setup, then .venv-triton/bin/python)", err=True)
        sys.exit(2)
    except KeyboardInterrupt:      # SIGINT / SIGTERM before serving began: nothing to keep
        pass


if __name__ == "__main__":
    main()
