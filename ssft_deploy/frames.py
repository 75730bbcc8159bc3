"""The one frame contract of the package: what a camera frame may be, and how it becomes 8-bit.

Accepted frames (numpy arrays, ``H x W`` at least 2 x 2):

- ``uint8``: BGR ``HxWx3``, BGRA ``HxWx4``, grey ``HxW`` / ``HxWx1`` (passed through, ``HxWx1``
  squeezed);
- ``uint16`` (radiometric thermal cameras, 16-bit PNG / TIFF sequences) and finite ``float``
  (e.g. temperatures in kelvin), one channel (or three): mapped to ``uint8`` by a
  :class:`Stretch`, set per camera.

A :class:`Stretch` maps a window ``[lo, hi]`` of raw values linearly onto ``0..255`` (values
outside are clipped). ``mode="percentile"`` (the default) takes ``lo, hi`` as the ``low`` and
``high`` percentiles of each frame (1 and 99 unless set), so any sensor gives a visible image
(where the two meet, on a flat background with a person on under 1% of the pixels, the frame's
min and max instead);
``mode="fixed"`` uses ``low, high`` as raw values (e.g. ``fixed:27315:31315`` for a camera whose
counts are centi-kelvin, 0-40 C): identical pixels map to identical grey levels in every frame,
which keeps a person's appearance stable when the scene's temperature range changes. Spec strings
(CLI): ``percentile``, ``percentile:LOW:HIGH``, ``fixed:LO:HI``.

``FrameBatcher.submit_boxes``, ``ReIDRuntime.extract_boxes`` and the video sources all go through
:func:`to_uint8`, so a frame that works on one path works on all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssft_deploy.errors import InputError

#: Percentiles of frames from 256x256 up are estimated on every ``_SUBSAMPLE``-th pixel per axis:
#: the full frame costs about 16x more and moves the window by well under a grey level.
_SUBSAMPLE = 4


@dataclass(frozen=True)
class Stretch:
    """Linear map of raw values ``[lo, hi]`` onto ``0..255``; see the module docstring."""

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.0

    def __post_init__(self) -> None:
        if self.mode not in ("percentile", "fixed"):
            raise InputError(f"stretch mode must be 'percentile' or 'fixed', got {self.mode!r}")
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.low >= self.high:
            raise InputError(f"stretch needs finite low < high, got {self.low}, {self.high}")
        if self.mode == "percentile" and not 0.0 <= self.low < self.high <= 100.0:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got "
                             f"{self.low}, {self.high}")

    @classmethod
    def parse(cls, spec: str | Stretch | None) -> Stretch:
        """``"percentile"``, ``"percentile:LOW:HIGH"`` or ``"fixed:LO:HI"`` -> Stretch."""
        if spec is None:
            return cls()
        if isinstance(spec, Stretch):
            return spec
        parts = str(spec).strip().lower().split(":")
        try:
            if parts == ["percentile"]:
                return cls()
            if len(parts) == 3 and parts[0] in ("percentile", "fixed"):
                return cls(parts[0], float(parts[1]), float(parts[2]))
        except ValueError:
            pass
        raise InputError(f"cannot read stretch {spec!r}: use 'percentile', "
                         "'percentile:LOW:HIGH' or 'fixed:LO:HI'")

    def window(self, raw: np.ndarray) -> tuple[float, float]:
        """The raw ``(lo, hi)`` this stretch maps onto 0..255 for ``raw``."""
        if self.mode == "fixed":
            return float(self.low), float(self.high)
        step = _SUBSAMPLE if raw.shape[0] * raw.shape[1] >= 256 * 256 else 1
        lo, hi = np.percentile(raw[::step, ::step], (self.low, self.high))
        if hi <= lo:
            # The percentiles meet on a flat background when the person covers fewer pixels
            # than 100 - high percent: min / max of the whole frame keep that person visible.
            lo, hi = raw.min(), raw.max()
        return float(lo), float(hi)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw values -> ``uint8`` of the same shape. A flat frame (``hi == lo`` even after the
        percentile window fell back to min / max) maps to 0."""
        lo, hi = self.window(raw)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out = (raw.astype(np.float32) - np.float32(lo)) * np.float32(scale)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def __str__(self) -> str:
        return f"{self.mode}:{self.low:g}:{self.high:g}"


DEFAULT_STRETCH = Stretch()


def to_uint8(frame: object, stretch: Stretch | str | None = None) -> np.ndarray:
    """A camera frame -> ``uint8`` ``HxW`` (grey) or ``HxWx3`` / ``HxWx4`` (BGR / BGRA).

    ``uint8`` frames pass through untouched (no copy); ``uint16`` / float frames go through
    ``stretch`` (default: per-frame 1-99 percentile). Anything else is an InputError that says
    what is accepted."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise InputError(f"a frame must be HxW, HxWx1, HxWx3 or HxWx4, got shape "
                         f"{list(frame.shape)}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise InputError(f"a frame must be at least 2x2 pixels, got {list(frame.shape)}")
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.uint16 or np.issubdtype(frame.dtype, np.floating):
        if frame.ndim == 3 and frame.shape[2] == 4:
            frame = frame[:, :, :3]
        if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
            raise InputError("a float frame contains NaN or infinite values")
        return Stretch.parse(stretch).apply(frame)
    raise InputError(f"a frame must be uint8 (BGR / grey), uint16 or float (thermal, mapped to "
                     f"8-bit by a Stretch), got {frame.dtype}")


def fit_size(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` resized to ``size`` (height, width), or itself when it already has that size:
    a camera's detector state, tracker and annotated video all assume one frame size."""
    import cv2

    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    shrink = frame.shape[0] * frame.shape[1] > h * w
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_bgr(frame: object, stretch: Stretch | str | None = None) -> np.ndarray:
    """:func:`to_uint8`, then grey replicated / alpha dropped: ``uint8`` ``HxWx3`` BGR (for
    detectors and drawing)."""
    import cv2

    frame = to_uint8(frame, stretch)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame
