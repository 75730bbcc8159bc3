"""Crops or frame + boxes -> the model input: RGB, resized, normalised float32 ``[B,3,H,W]``.

Per-item problems (unreadable file, empty or degenerate box, wrong dtype) do not fail the batch:
they come back in ``Batch.errors`` beside the good items. Crops given as arrays are OpenCV BGR
``uint8`` (``HxWx3``, ``HxWx4`` or single-channel grey / IR ``HxW`` / ``HxWx1``); files are read as
3 channels (grey / IR files replicated).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ssft_deploy.datasets.images import read_image
from ssft_deploy.errors import InputError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MIN_BOX = 2  # pixels: a narrower clipped box carries no person


@dataclass
class Batch:
    """``array [n,3,H,W]`` for the good items, their positions in the input ``ok_indices [n]``,
    and ``errors``: input position -> InputError for the others."""

    array: np.ndarray
    ok_indices: np.ndarray
    errors: dict[int, InputError] = field(default_factory=dict)

    def raise_errors(self) -> None:
        """Raise one InputError listing every failed item (no-op when all are good)."""
        raise_item_errors(self.errors, len(self.errors) + len(self.ok_indices))


def raise_item_errors(errors: dict[int, InputError], total: int) -> None:
    """One InputError naming each failed item position (no-op without errors)."""
    if errors:
        lines = "; ".join(f"item {i}: {e}" for i, e in sorted(errors.items()))
        raise InputError(f"{len(errors)} of {total} items failed: {lines}")


def clip_box(box: Sequence[float], frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` -> pixel ``(x0, y0, x1, y1)`` clipped to the frame; InputError if the
    clipped box is empty, smaller than ``MIN_BOX`` or not 4 finite numbers."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise InputError(f"a box must be 4 numbers (x, y, w, h), got {box!r}") from exc
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"box {box!r} has a non-finite value")
    x0, y0 = max(round(x), 0), max(round(y), 0)
    x1, y1 = min(round(x + w), frame_w), min(round(y + h), frame_h)
    if x1 - x0 < MIN_BOX or y1 - y0 < MIN_BOX:
        raise InputError(f"box {tuple(box)} is empty, degenerate or outside the "
                         f"{frame_w}x{frame_h} frame")
    return x0, y0, x1, y1


def check_image(image: object) -> np.ndarray:
    """A BGR / BGRA / grey ``uint8`` image (``HxWx1`` squeezed to ``HxW``); InputError else."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"a crop must be a numpy array or an image path, got "
                         f"{type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"a crop must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise InputError(f"a crop must be HxW, HxWx1, HxWx3 or HxWx4, got {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"a crop is empty ({list(image.shape)})")
    return image


def bgr_to_rgb(image: object) -> np.ndarray:
    """A BGR / BGRA / grey ``uint8`` array -> RGB ``HxWx3`` (grey replicated); InputError else."""
    image = check_image(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


@dataclass(frozen=True)
class Preprocessor:
    """Resize to ``input_size`` (h, w), scale to [0,1], normalise with ``mean`` / ``std``.

    Image files whose header declares more than ``max_pixels`` pixels fail as InputError items
    before they are decoded (``None``: ``$SSFT_MAX_IMAGE_PIXELS`` or 50 MP, see
    ``ssft_deploy.datasets.images``)."""

    input_size: tuple[int, int] = (288, 144)
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    max_pixels: int | None = None

    @classmethod
    def from_bundle(cls, bundle) -> Preprocessor:
        """The preprocessing a bundle's manifest asks for."""
        return cls(tuple(bundle.input_size), tuple(bundle.mean), tuple(bundle.std))

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)

    def normalise(self, rgb_u8: np.ndarray) -> np.ndarray:
        """``[n,H,W,3]`` RGB uint8 -> ``[n,3,H,W]`` float32 ``(x/255 - mean) / std``."""
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float32))).astype(np.float32)
        shift = (np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32))
        x = rgb_u8.astype(np.float32) * scale - shift.astype(np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _rgb(self, item: object) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            return read_image(item, self.max_pixels)
        return bgr_to_rgb(item)  # type: ignore[arg-type]

    def _collect(self, items: Sequence[object], to_rgb) -> Batch:
        h, w = self.input_size
        resized, ok, errors = [], [], {}
        for i, item in enumerate(items):
            try:
                resized.append(self._resize(to_rgb(item)))
                ok.append(i)
            except InputError as exc:
                errors[i] = exc
        stack = (np.stack(resized) if resized else np.zeros((0, h, w, 3), np.uint8))
        return Batch(self.normalise(stack), np.asarray(ok, np.int64), errors)

    def crops(self, items: Sequence[object]) -> Batch:
        """Crops (BGR uint8 arrays) and/or image paths -> Batch."""
        if isinstance(items, (np.ndarray, str, os.PathLike)) and not (
                isinstance(items, np.ndarray) and items.ndim == 4):
            items = [items]  # one crop or one path
        return self._collect(list(items), self._rgb)

    def boxes(self, frame: np.ndarray, boxes: Sequence[Sequence[float]]) -> Batch:
        """A BGR (or grey) frame + ``(x, y, w, h)`` boxes -> Batch (boxes clipped to the frame).

        A bad frame is an InputError for the whole call; a bad box only for its item."""
        frame = check_image(frame)
        fh, fw = frame.shape[:2]

        def cut(box):
            x0, y0, x1, y1 = clip_box(box, fw, fh)
            return bgr_to_rgb(frame[y0:y1, x0:x1])

        return self._collect(list(boxes), cut)

    def one(self, crop: object) -> np.ndarray:
        """One crop or path -> ``[3,H,W]`` float32 (InputError when it is bad)."""
        batch = self.crops([crop])
        batch.raise_errors()
        return batch.array[0]
