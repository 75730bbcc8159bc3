"""``ReIDRuntime``: the one public entry point (bundle -> engines -> features -> transfer -> search).

```python
rt = ReIDRuntime.open("runs/demo/bundle", precision="fp32", backend="auto")
q = rt.extract(crops_or_paths, modality="ir")
rt.gallery.add(rt.extract(gallery_crops, modality="rgb"), pids, camids)
hits = rt.search(q, top=10, mode="all-queries")   # list[SearchResult], one per query
```

Thread-safety: ``extract*`` and ``transfer_fn`` may be called from several threads (engines are
thread-safe); ``search(mode="rolling")`` updates a thread-safe rolling auxiliary buffer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ssft_deploy.bundle import Bundle, load_bundle
from ssft_deploy.engines import Engine, open_engine
from ssft_deploy.engines.fallback import LazyEngine, unlimited_fallback
from ssft_deploy.errors import BundleError, EngineError, GalleryError, InputError
from ssft_deploy.features import Features, modality_code
from ssft_deploy.frames import Stretch, to_uint8
from ssft_deploy.gallery import MODES, Gallery, GalleryStore, SearchResult, bundle_binding
from ssft_deploy.preprocess import Batch, Preprocessor, raise_item_errors
from ssft_deploy.transfer import SSTN, RollingAuxiliary, l2_distances, transfer_feeds

log = logging.getLogger("ssft_deploy.runtime")
_EXTRACTORS = {0: "extractor_rgb", 1: "extractor_ir"}


@dataclass
class Extraction:
    """Features of the good items, their input positions, and an InputError per bad item."""

    features: Features
    ok_indices: np.ndarray
    errors: dict[int, InputError] = field(default_factory=dict)

    def raise_errors(self) -> None:
        """One InputError naming every bad item (no-op when all were good)."""
        raise_item_errors(self.errors, len(self.errors) + len(self.ok_indices))


class ReIDRuntime:
    """Extractors per modality + the transfer engine of one bundle. Build with :meth:`open`."""

    def __init__(self, bundle: Bundle, extractors: dict[int, Engine], transfer: Engine | None,
                 *, affinity: str = "auto", max_batch: int = 32, rolling_size: int = 300,
                 gallery: GalleryStore | None = None,
                 transfer_fallback: LazyEngine | None = None) -> None:
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        self.bundle = bundle
        self.extractors = extractors
        self.transfer_engine = transfer
        self.preprocessor = Preprocessor.from_bundle(bundle)
        self.max_batch = int(max_batch)
        # Graphs beyond the transfer engine's rows (a TensorRT profile) run on the fallback.
        self.transfer_fallback = transfer_fallback
        self.sstn = SSTN(self.transfer_fn, k=bundle.k, parts=bundle.transfer_parts,
                         affinity=affinity, max_rows=transfer.max_batch if transfer else None,
                         fallback=self.fallback_transfer_fn if transfer_fallback else None)
        self.rolling = RollingAuxiliary(rolling_size)
        self.binding = bundle_binding(bundle)
        self.gallery = gallery if gallery is not None else Gallery(*self.binding.dims,
                                                                   self.binding.model_hash)
        self.gallery.bind(self.binding)  # GalleryError for another bundle's gallery

    @classmethod
    def open(cls, bundle: str | os.PathLike | Bundle, precision: str = "fp32",
             backend: str = "auto", affinity: str = "auto", *, max_batch: int = 32,
             intra_op_threads: int | None = None, device_id: int = 0, rolling_size: int = 300,
             gallery: GalleryStore | None = None, allow_ungated: bool = False) -> ReIDRuntime:
        """Load and verify ``bundle``, open both extractors and the transfer graph.

        ``precision="auto"`` picks the fastest gated (backend, precision) on this machine from a
        short measurement cached per machine and bundle (``engines.autoselect``); an explicit
        ``backend`` restricts it. The transfer graph falls back to fp32 when the bundle has none
        at ``precision``. Variants without a pass verdict of the parity gate are refused unless
        ``allow_ungated`` (``precision="auto"`` never picks them).
        """
        b = load_bundle(bundle, allow_ungated=allow_ungated)
        pick = None
        if precision == "auto":
            from ssft_deploy.engines.autoselect import choose

            pick = choose(b, backend, batch=min(max_batch, 8), intra_op_threads=intra_op_threads,
                          device_id=device_id)
            backend, precision = pick.backend, pick.precision
        opts = {"intra_op_threads": intra_op_threads, "device_id": device_id}
        extractors = {m: open_engine(b, g, precision, backend, **opts)
                      for m, g in _EXTRACTORS.items()}
        t_precision = precision
        try:
            transfer = open_engine(b, "transfer", precision, backend, **opts)
        except (BundleError, EngineError) as exc:
            if precision == "fp32":
                raise
            log.info("transfer graph at %s unavailable (%s); using fp32", precision, exc)
            t_precision = "fp32"
            transfer = open_engine(b, "transfer", t_precision, backend, **opts)
        log.info("runtime: %s %s, extractors on %s, transfer on %s", b.root, precision,
                 extractors[0].name, transfer.name)
        rt = cls(b, extractors, transfer, affinity=affinity, max_batch=max_batch,
                 rolling_size=rolling_size, gallery=gallery,
                 transfer_fallback=unlimited_fallback(b, "transfer", t_precision, transfer,
                                                      **opts))
        rt.selection = pick  # the autoselect.Choice behind precision="auto" (None: explicit)
        return rt

    # -- extraction ---------------------------------------------------------------------------
    def extract_array(self, images: np.ndarray, modality: str | int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
        """Normalised ``[B,3,H,W]`` float32 -> (shared ``[B,Ds]``, specific ``[B,Dp]``), run in
        chunks of at most ``max_batch``. Also the ``extract_fn`` of ``FrameBatcher``."""
        eng = self.extractors[modality_code(modality)]
        step = min(self.max_batch, eng.max_batch or self.max_batch)
        images = np.asarray(images)
        if images.ndim != 4:
            raise InputError(f"images must be [B,3,H,W], got shape {list(images.shape)}")
        if len(images) == 0:
            dims = self.bundle.dims
            return (np.zeros((0, dims["shared"]), np.float32),
                    np.zeros((0, dims["specific"]), np.float32))
        outs = [eng.run({"images": images[s:s + step]}) for s in range(0, len(images), step)]
        return (np.concatenate([o["shared"] for o in outs]),
                np.concatenate([o["specific"] for o in outs]))

    def preprocess_fn(self, crop: object) -> np.ndarray:
        """One BGR crop or path -> ``[3,H,W]`` float32 (the ``FrameBatcher`` preprocess)."""
        return self.preprocessor.one(crop)

    def _extraction(self, batch: Batch, modality: str | int) -> Extraction:
        code = modality_code(modality)
        shared, specific = self.extract_array(batch.array, code)
        return Extraction(Features(shared, specific, np.full(len(shared), code, np.int64)),
                          batch.ok_indices, batch.errors)

    def extract_batch(self, crops: Sequence[object], modality: str | int) -> Extraction:
        """Crops / paths -> Extraction (bad items reported, not fatal)."""
        return self._extraction(self.preprocessor.crops(crops), modality)

    def extract(self, crops: Sequence[object], modality: str | int) -> Features:
        """Crops (BGR uint8 arrays) or image paths -> Features; InputError if any item is bad."""
        ex = self.extract_batch(crops, modality)
        ex.raise_errors()
        return ex.features

    def extract_boxes_batch(self, frame: np.ndarray, boxes: Sequence[Sequence[float]],
                            modality: str | int, stretch: Stretch | str | None = None
                            ) -> Extraction:
        """A frame + ``(x, y, w, h)`` boxes -> Extraction (bad boxes reported). Frames follow
        ``ssft_deploy.frames``: BGR, grey, or 16-bit / float mapped to 8-bit by ``stretch``."""
        return self._extraction(self.preprocessor.boxes(to_uint8(frame, stretch), boxes),
                                modality)

    def extract_boxes(self, frame: np.ndarray, boxes: Sequence[Sequence[float]],
                      modality: str | int, stretch: Stretch | str | None = None) -> Features:
        """A frame + ``(x, y, w, h)`` boxes -> Features; InputError if any box is bad."""
        ex = self.extract_boxes_batch(frame, boxes, modality, stretch)
        ex.raise_errors()
        return ex.features

    # -- transfer and search ------------------------------------------------------------------
    def transfer_fn(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray,
                    engine: Engine | None = None) -> np.ndarray:
        """``transferred = transfer(z, idx, w)`` through the bundle's transfer engine (Eq. 10-11)
        or the given ``engine``."""
        engine = engine or self.transfer_engine
        if engine is None:
            raise EngineError("this runtime was opened without a transfer engine")
        return engine.run(transfer_feeds(engine, z, idx, w))["transferred"]

    def fallback_transfer_fn(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``transfer_fn`` on the unlimited fallback engine (opened at the first call)."""
        if self.transfer_fallback is None:
            raise EngineError("this runtime has no fallback transfer engine")
        return self.transfer_fn(z, idx, w, self.transfer_fallback.get())

    def distances(self, query: Features, gallery: Features, mode: str = "all-queries"
                  ) -> np.ndarray:
        """Query x gallery distances ``[Q, G]`` (smaller = closer) in one of the gallery's
        :data:`~ssft_deploy.gallery.MODES`, every gallery row, no ranking (for evaluation)."""
        _check_mode(mode)
        if mode == "all-queries":
            return self.sstn.auxiliary_distances(query, gallery)
        if mode == "single-query":
            return self.sstn.single_query_distances(query, gallery)
        if mode == "rolling":
            aux = self.rolling.snapshot()
            dist = self.sstn.auxiliary_distances(query, gallery, auxiliary=aux)
            self.rolling.add(query)
            return dist
        return l2_distances(query.shared, gallery.shared)  # "shared"

    def search(self, query: Features, top: int = 10, mode: str = "all-queries",
               gallery: GalleryStore | None = None, cross_modality: bool = True,
               **options: object) -> list[SearchResult]:
        """The ``top`` identities of ``gallery`` (default: :attr:`gallery`) for each query, best
        first, through :meth:`GalleryStore.search` with this runtime's SSTN (and, for "rolling",
        its rolling auxiliary set). With ``cross_modality`` a query searches the other modality;
        ``options``: ``shortlist`` (two-stage search), ``since`` / ``until`` (time window)."""
        _check_mode(mode)
        gallery = self.gallery if gallery is None else gallery
        if not isinstance(gallery, GalleryStore):
            raise InputError(f"gallery must be a ssft_deploy.gallery store (Gallery, "
                             f"open_gallery(...)), got {type(gallery).__name__}")
        if gallery is not self.gallery:
            gallery.bind(self.binding)
        if len(gallery) == 0:
            raise GalleryError("the gallery is empty: add features before searching")
        return gallery.search(query, top, transfer=self.sstn, mode=mode,
                              auxiliary=self.rolling if mode == "rolling" else None,
                              cross_modality=cross_modality, **options)

    # -- evaluation ---------------------------------------------------------------------------
    def as_feature_source(self, progress: bool = True) -> BundleFeatureSource:
        """A ``FeatureSource`` for ``ssft_deploy.evaluation`` backed by this runtime."""
        return BundleFeatureSource(self, progress=progress)

    def close(self) -> None:
        for eng in (*self.extractors.values(), self.transfer_engine, self.transfer_fallback):
            if eng is not None:
                eng.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BundleFeatureSource:
    """``extract(records) -> (shared, specific)`` and ``transfer(z, idx, w)`` for evaluation."""

    def __init__(self, runtime: ReIDRuntime, progress: bool = True) -> None:
        self.runtime, self.progress = runtime, progress
        self.k, self.parts = runtime.bundle.k, runtime.bundle.transfer_parts
        self.max_rows = runtime.sstn.max_rows
        self.transfer_fallback = runtime.sstn.fallback

    def extract(self, records: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
        """Images of ``records`` (``.path``, ``.modality``), batched per modality, in order."""
        from ssft_deploy.evaluation import extract_records

        rt = self.runtime
        return extract_records(records, rt.preprocessor, rt.extract_array, rt.bundle.dims,
                               rt.max_batch, self.progress)

    def transfer(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        return self.runtime.transfer_fn(z, idx, w)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
