"""Reading dataset images as RGB uint8 arrays (IR images become 3 identical channels).

A file's pixel count is read from its header before it is decoded, so a small file that would
inflate to gigabytes (a 48 KB PNG declaring 20000x20000 pixels decodes to 2.4 GB) is refused
cheaply. The limit is ``max_pixels`` per call, else ``$SSFT_MAX_IMAGE_PIXELS``, else
``DEFAULT_MAX_PIXELS``.
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np

from ssft_deploy.errors import InputError

DEFAULT_MAX_PIXELS = 50_000_000   # an 8K frame is 33 MP; a person crop is far below 1 MP
MAX_PIXELS_ENV = "SSFT_MAX_IMAGE_PIXELS"


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else ``$SSFT_MAX_IMAGE_PIXELS``, else default."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        try:
            max_pixels = int(raw) if raw else DEFAULT_MAX_PIXELS
        except ValueError:
            raise InputError(f"${MAX_PIXELS_ENV}={raw!r} is not an integer pixel count") from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) \
            or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return int(max_pixels)


def header_size(data: bytes | np.ndarray, name: str, limit: int) -> tuple[int, int]:
    """``(width, height)`` from an encoded image's header, without decoding its pixels.

    Pillow reads the header only (its ``open`` is lazy); it is picked because it knows the
    headers of every format OpenCV decodes for us (JPEG, PNG, BMP, TIFF, WebP, PNM, ...)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(memoryview(data))) as im:
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        # Pillow refuses headers over 2 x PIL.Image.MAX_IMAGE_PIXELS before telling the size.
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        hint = ("raise max_pixels or $" + MAX_PIXELS_ENV + " if it is genuine" if limit <= pil_limit
                else "a limit this high also needs PIL.Image.MAX_IMAGE_PIXELS raised")
        raise InputError(f"image {name} has more than {pil_limit} pixels, over the limit of "
                         f"{min(limit, pil_limit)} ({hint})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"cannot decode image {name}: not a readable image file (corrupt, "
                         "truncated or of an unsupported format)") from None


def check_pixels(data: bytes | np.ndarray, name: str, max_pixels: int | None = None
                 ) -> tuple[int, int]:
    """``(width, height)`` from the header; InputError when unreadable or over the pixel limit
    (nothing is decoded)."""
    limit = max_pixels_limit(max_pixels)
    w, h = header_size(data, name, limit)
    if w * h > limit:
        raise InputError(f"image {name} is {w}x{h} = {w * h} pixels, over the limit of {limit} "
                         f"(raise max_pixels or ${MAX_PIXELS_ENV} if it is genuine)")
    return w, h


def decode_image(data: bytes | np.ndarray, name: str, max_pixels: int | None = None
                 ) -> np.ndarray:
    """Encoded image bytes -> RGB ``uint8 [H, W, 3]``; InputError when unreadable or when its
    header declares more than the pixel limit (checked before any pixel is decoded)."""
    check_pixels(data, name, max_pixels)
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise InputError(f"cannot decode image {name}: {str(exc).strip().splitlines()[-1]}"
                         ) from None
    if img is None:
        raise InputError(f"cannot decode image {name}: not a readable image file (corrupt?)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """The image at ``path`` as an RGB ``uint8`` array ``[H, W, 3]``.

    Grey (IR) images are replicated to 3 channels. A missing, unreadable, corrupt or oversized
    (see ``decode_image``) file raises InputError naming the file.
    """
    path = os.fspath(path)
    try:
        # fromfile + imdecode: cv2.imread cannot open non-ASCII paths on every platform.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data.size:
        raise InputError(f"cannot decode image {path}: the file is empty")
    return decode_image(data, path, max_pixels)


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB (or grey ``[H, W]``) uint8 array as a JPEG file."""
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError(f"cannot encode image for {os.fspath(path)}")
    buf.tofile(os.fspath(path))
