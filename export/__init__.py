"""ssft-export: checkpoint -> bundle (ONNX graphs, fp16 / int8 variants, TensorRT engines,
manifest, parity gate) and a Triton model repository. May import torch; the runtime never
imports this package."""

from __future__ import annotations

__all__ = ["ExportOptions", "verify_bundle", "write_bundle"]


def __getattr__(name: str):
    # Lazy: ``import export`` stays cheap until the writer is needed.
    if name == "verify_bundle":
        from export.verify import verify_bundle

        return verify_bundle
    if name in __all__:
        from export import bundle_writer

        return getattr(bundle_writer, name)
    raise AttributeError(name)
