"""Capture backends of a camera: video files and streams through OpenCV, and image folders.

Kept apart from the reader threads (``sources``): each backend only opens a source and returns
its next frame (None when none came); counting, resizing, reconnecting are the reader's.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from ssft_deploy.datasets.images import check_pixels, max_pixels_limit
from ssft_deploy.errors import InputError

# OpenCV serialises every FFmpeg open behind one process-wide lock unless told FFmpeg is
# thread-safe (it is since FFmpeg 4): one stalled stream's open then held up every other camera's
# open for its whole timeout (a file camera beside it processed 0 frames). Set before the first
# open; a user's explicit setting wins.
os.environ.setdefault("OPENCV_FFMPEG_IS_THREAD_SAFE", "1")

log = logging.getLogger("ssft_deploy.video")
_IMAGE_EXT = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm")


class Capture(Protocol):
    """What a reader needs from a source: the next frame (None when none came) and release."""

    fps: float

    def read(self) -> np.ndarray | None: ...

    def release(self) -> None: ...


class OpenCVCapture:
    """A video file or stream through ``cv2.VideoCapture`` (FFmpeg backend where available)."""

    def __init__(self, source: str, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 10.0) -> None:
        import cv2

        self.source = source
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        t0 = time.monotonic()
        self.cap = cv2.VideoCapture(source, cv2.CAP_ANY, params)
        if not self.cap.isOpened():
            self.cap.release()
            if time.monotonic() - t0 >= 0.9 * open_timeout_s:
                raise InputError(f"opening {source!r} timed out after {open_timeout_s:g} s "
                                 "(the server accepted but sent nothing)")
            raise InputError(f"OpenCV cannot open {source!r} (missing file, unsupported codec "
                             "or unreachable stream)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else 25.0

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        return frame if ok else None

    def release(self) -> None:
        self.cap.release()


class ImageSequence:
    """Image files in name order, each read unchanged (16-bit stays 16-bit); a file that cannot
    be read, or whose header declares more than the pixel limit (``max_pixels``, else
    ``$SSFT_MAX_IMAGE_PIXELS``; checked before decoding), yields an empty array (counted corrupt
    by the reader; the reason is logged), the end yields None."""

    def __init__(self, source: str, fps: float = 25.0, max_pixels: int | None = None) -> None:
        path = Path(source)
        files = (sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_EXT)
                 if path.is_dir() else sorted(Path(p) for p in glob.glob(source)))
        if not files:
            raise InputError(f"no images ({', '.join(_IMAGE_EXT)}) in {source!r}")
        self.files, self.pos, self.fps = files, 0, float(fps)
        self.max_pixels = max_pixels_limit(max_pixels)

    def read(self) -> np.ndarray | None:
        import cv2

        if self.pos >= len(self.files):
            return None
        f = self.files[self.pos]
        self.pos += 1
        try:
            data = np.fromfile(f, dtype=np.uint8)
            check_pixels(data, str(f), self.max_pixels)
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except (OSError, InputError, cv2.error) as exc:
            log.warning("skipped frame %s: %s", f, exc)
            img = None
        return img if img is not None else np.zeros((0, 0), np.uint8)

    def release(self) -> None:
        self.pos = len(self.files)


def open_source(source: str, open_timeout_s: float = 10.0, read_timeout_s: float = 10.0
                ) -> Capture:
    """An image folder / glob -> ImageSequence; anything else -> OpenCVCapture."""
    if os.path.isdir(source) or any(c in source for c in "*?["):
        return ImageSequence(source)
    return OpenCVCapture(source, open_timeout_s, read_timeout_s)
