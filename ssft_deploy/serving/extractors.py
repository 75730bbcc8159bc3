"""A bundle's two extractor engines as one ``extract_fn(batch, modality)`` plus its preprocessing."""

from __future__ import annotations

import os

import numpy as np

from ssft_deploy.bundle import Bundle, load_bundle
from ssft_deploy.engines import open_engine
from ssft_deploy.errors import InputError
from ssft_deploy.preprocess import Preprocessor


class BundleExtractor:
    """``extract(x[B,3,H,W] float32, "rgb"|"ir") -> (shared [B,Ds], specific [B,Dp])``.

    The signature the ``FrameBatcher`` and the Triton server call; ``preprocess(crop)`` turns one
    BGR uint8 crop into the ``[3,H,W]`` model input the bundle's manifest asks for.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, precision: str = "fp32",
                 backend: str = "auto", intra_op_threads: int | None = None):
        self.bundle = load_bundle(bundle)
        self.engines = {m: open_engine(self.bundle, f"extractor_{m}", precision, backend,
                                       intra_op_threads=intra_op_threads)
                        for m in ("rgb", "ir")}
        self.preprocessor = Preprocessor.from_bundle(self.bundle)
        self.input_size = tuple(self.bundle.input_size)
        self.dims = dict(self.bundle.dims)

    def __call__(self, x: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        if modality not in self.engines:
            raise InputError(f"modality must be 'rgb' or 'ir', got {modality!r}")
        out = self.engines[modality].run({"images": x})
        return out["shared"], out["specific"]

    def preprocess(self, crop: object) -> np.ndarray:
        return self.preprocessor.one(crop)

    def close(self) -> None:
        for eng in self.engines.values():
            eng.close()
