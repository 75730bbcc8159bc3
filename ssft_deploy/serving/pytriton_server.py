"""Serve a bundle's extractors on Triton Inference Server through PyTriton (dynamic batching).

Run inside ``.venv-triton`` (PyTriton pins numpy < 2); ``ssft_deploy.serving.launch`` starts it from
any environment. Models, one per modality so Triton batches each modality on its own:

- ``ssft_extract_rgb`` / ``ssft_extract_ir``: ``images`` float32 ``[3,H,W]`` (the normalised model
  input, ``ssft_deploy.preprocess``) -> ``shared`` float32 ``[Ds]``, ``specific`` float32 ``[Dp]``.

Triton's dynamic batcher stacks concurrent requests into one engine call of up to ``max_batch``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import sysconfig
from collections.abc import Callable

import click
import numpy as np

from ssft_deploy.errors import SSFTError

MODEL_NAMES = {"rgb": "ssft_extract_rgb", "ir": "ssft_extract_ir"}
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


def serve(bundle: str, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, precision: str = "fp32", backend: str = "auto",
          max_batch: int = 32, queue_delay_us: int = 2000) -> None:
    """Open the bundle, start Triton on ``host`` and serve until SIGINT / SIGTERM."""
    ensure_libpython_path()
    from pytriton.triton import Triton, TritonConfig

    from ssft_deploy.serving.extractors import BundleExtractor

    extractor = BundleExtractor(bundle, precision=precision, backend=backend)
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host,
                          grpc_port=grpc_port, metrics_address=host, metrics_port=metrics_port,
                          exit_timeout_secs=5, log_verbose=0)
    # PyTriton's serve() turns SIGINT into a clean stop; give SIGTERM the same meaning.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Triton(config=config) as triton:
            bind_extractors(triton, extractor, extractor.input_size, extractor.dims, max_batch,
                            queue_delay_us)
            log.warning("ssft serving %s on http://%s:%d (grpc %d): models %s", bundle, host,
                        http_port, grpc_port, sorted(MODEL_NAMES.values()))
            triton.serve()
    finally:
        extractor.close()


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
def main(bundle: str, host: str, http_port: int, grpc_port: int, metrics_port: int,
         precision: str, backend: str, max_batch: int, queue_delay_us: int) -> None:
    """Serve BUNDLE's extractors on Triton (run in .venv-triton; see ssft_deploy.serving.launch)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        serve(bundle, host, http_port, grpc_port, metrics_port, precision, backend, max_batch,
              queue_delay_us)
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ImportError as exc:
        click.echo(f"error: {exc}; run the server in the PyTriton environment "
                   "(make triton-setup, then .venv-triton/bin/python)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
