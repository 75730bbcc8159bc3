"""Serve a bundle's extractors on Triton Inference Server through PyTriton (dynamic batching).

Run inside ``.venv-triton`` (PyTriton pins numpy < 2); ``ssft_deploy.serving.launch`` starts it from
any environment. Models, one per modality so Triton batches each modality on its own:

- ``ssft_extract_rgb`` / ``ssft_extract_ir``: ``images`` float32 ``[3,H,W]`` (the normalised model
  input, ``ssft_deploy.preprocess``) -> ``shared`` float32 ``[Ds]``, ``specific`` float32 ``[Dp]``.
- ``ssft_search`` (with ``--gallery``): a query's ``shared`` ``[Ds]``, ``specific`` ``[Dp]`` and
  ``modality`` ``[1]`` int64 -> the ``top`` best gallery identities of the other modality:
  ``pids`` ``[top]`` int64, ``distances`` ``[top]`` float32, ``entry_ids`` ``[top]`` int64 (the
  gallery entries that gave them; padded with -1 / inf). Searched in ``single-query`` mode
  (Eq. 22), so an answer does not depend on which requests share a batch.

Triton's dynamic batcher stacks concurrent requests into one engine call of up to ``max_batch``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import sysconfig
from collections.abc import Callable
from typing import TYPE_CHECKING

import click
import numpy as np

from ssft_deploy.errors import GalleryError, SSFTError

if TYPE_CHECKING:
    from ssft_deploy.gallery import Gallery

MODEL_NAMES = {"rgb": "ssft_extract_rgb", "ir": "ssft_extract_ir"}
SEARCH_MODEL = "ssft_search"
GALLERY_KEYS = ("shared", "specific", "modality", "pids", "camids")
TOKEN_ENV = "SSFT_TRITON_ACCESS_TOKEN"   # header 'triton-access-token' for admin endpoints
log = logging.getLogger("ssft_deploy.serving")


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


def make_infer_fn(extract: Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]],
                  modality: str) -> Callable:
    """A PyTriton ``@batch`` function: stacked ``images`` -> ``shared``, ``specific``."""
    from pytriton.decorators import batch

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        shared, specific = extract(images.astype(np.float32, copy=False), modality)
        return {"shared": np.asarray(shared, np.float32),
                "specific": np.asarray(specific, np.float32)}

    return infer


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
                     Tensor(name="specific", dtype=np.float32, shape=(dims["specific"],))],
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
                max_queue_delay_microseconds=queue_delay_us)),
            strict=True,
        )


def save_gallery(path: str | os.PathLike, feats, pids: np.ndarray, camids: np.ndarray) -> None:
    """Write a gallery (Features + pids + camids) as the ``.npz`` the server's --gallery reads."""
    np.savez(path, shared=feats.shared, specific=feats.specific, modality=feats.modality,
             pids=np.asarray(pids, np.int64), camids=np.asarray(camids, np.int64))


def load_gallery(path: str | os.PathLike, binding=None) -> Gallery:
    """A ``Gallery.save`` file or a ``save_gallery`` ``.npz`` (entry ids = its rows) -> Gallery;
    with ``binding`` (the served bundle's), GalleryError for another bundle's gallery."""
    from ssft_deploy.features import Features
    from ssft_deploy.gallery import MAGIC, Gallery

    try:
        with open(path, "rb") as fh:
            is_gallery = fh.read(len(MAGIC)) == MAGIC
    except OSError as exc:
        raise GalleryError(f"cannot read gallery file {path}: {exc}") from exc
    if is_gallery:
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


def make_search_fn(runtime, gallery: Gallery, top: int) -> Callable:
    """A PyTriton ``@batch`` function over ``runtime.search`` in single-query mode."""
    from pytriton.decorators import batch

    from ssft_deploy.features import Features

    @batch
    def infer(shared: np.ndarray, specific: np.ndarray, modality: np.ndarray
              ) -> dict[str, np.ndarray]:
        query = Features(shared, specific, modality.reshape(-1).astype(np.int64))
        hits = runtime.search(query, top=top, mode="single-query", gallery=gallery)
        n = len(hits)
        pids, ids = np.full((n, top), -1, np.int64), np.full((n, top), -1, np.int64)
        dist = np.full((n, top), np.inf, np.float32)
        for i, r in enumerate(hits):
            got = len(r.pids)
            pids[i, :got], dist[i, :got], ids[i, :got] = r.pids, r.distances, r.entry_ids
        return {"pids": pids, "distances": dist, "entry_ids": ids}

    return infer


def bind_search(triton, runtime, gallery: Gallery, top: int, max_batch: int,
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
                 Tensor(name="entry_ids", dtype=np.int64, shape=(top,))],
        config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
            max_queue_delay_microseconds=queue_delay_us)),
        strict=True,
    )


def serve(bundle: str, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, precision: str = "fp32", backend: str = "auto",
          max_batch: int = 32, queue_delay_us: int = 2000, gallery: str | None = None,
          top: int = 10) -> None:
    """Open the bundle's runtime, start Triton on ``host`` and serve until SIGINT / SIGTERM."""
    ensure_libpython_path()
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from ssft_deploy.runtime import ReIDRuntime

    runtime = ReIDRuntime.open(bundle, precision=precision, backend=backend,
                               max_batch=max_batch)
    from ssft_deploy.gallery import bundle_binding

    gal = load_gallery(gallery, bundle_binding(runtime.bundle)) if gallery else None
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host,
                          grpc_port=grpc_port, metrics_address=host, metrics_port=metrics_port,
                          exit_timeout_secs=5, log_verbose=0)
    # Statistics, model-repository and other admin endpoints stay behind PyTriton's access
    # token; the launcher hands its token over in the environment (not argv, which ps shows).
    security = TritonSecurityConfig(access_token=os.environ.get(TOKEN_ENV) or None)
    # PyTriton's serve() turns SIGINT into a clean stop; give SIGTERM the same meaning.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Triton(config=config, security_config=security) as triton:
            bind_extractors(triton, runtime.extract_array, runtime.bundle.input_size,
                            runtime.bundle.dims, max_batch, queue_delay_us)
            if gal is not None:
                bind_search(triton, runtime, gal, top, max_batch, queue_delay_us)
            log.warning("ssft serving %s on http://%s:%d (grpc %d)%s", bundle, host,
                        http_port, grpc_port, " with search" if gal else "")
            triton.serve()
    finally:
        runtime.close()


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (loopback by default)")
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
def main(bundle: str, host: str, http_port: int, grpc_port: int, metrics_port: int,
         precision: str, backend: str, max_batch: int, queue_delay_us: int,
         gallery: str | None, top: int) -> None:
    """Serve BUNDLE's extractors on Triton (run in .venv-triton; see ssft_deploy.serving.launch)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        serve(bundle, host, http_port, grpc_port, metrics_port, precision, backend, max_batch,
              queue_delay_us, gallery, top)
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ImportError as exc:
        click.echo(f"error: {exc}; run the server in the PyTriton environment "
                   "(make triton-setup, then .venv-triton/bin/python)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
