"""Reading dataset images as RGB uint8 arrays (IR images become 3 identical channels)."""

from __future__ import annotations

import os

import cv2
import numpy as np

from ssft_deploy.errors import InputError


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as an RGB ``uint8`` array ``[H, W, 3]``.

    Grey (IR) images are replicated to 3 channels. A missing, unreadable or corrupt file raises
    InputError naming the file.
    """
    path = os.fspath(path)
    try:
        # fromfile + imdecode: cv2.imread cannot open non-ASCII paths on every platform.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise InputError(f"cannot decode image {path}: not a readable image file (corrupt or empty?)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB (or grey ``[H, W]``) uint8 array as a JPEG file."""
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError(f"cannot encode image for {os.fspath(path)}")
    buf.tofile(os.fspath(path))
