"""Frames under ordinary faults (issue 19 item 5): an oversized image in a camera folder, mixed
frame sizes, a flat 16-bit background with a small warm person."""

from __future__ import annotations

import cv2
import numpy as np

from ssft_deploy.frames import Stretch, to_uint8
from ssft_deploy.video import CameraSpec, PipelineConfig, VideoPipeline
from ssft_deploy.video.captures import ImageSequence


def _walker(n: int, h: int = 96, w: int = 160) -> list[np.ndarray]:
    """Grey frames of a bright block walking right (a person the motion detector finds)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        f = (40 + rng.integers(0, 3, (h, w))).astype(np.uint8)
        if i >= 6:
            x = 10 + 2 * (i - 6)
            f[24:72, x:x + 20] = 230
        out.append(f)
    return out


def _folder(tmp_path, frames) -> str:
    folder = tmp_path / "cam"
    folder.mkdir()
    for i, f in enumerate(frames):
        assert cv2.imwrite(str(folder / f"{i:04d}.png"), f)
    return str(folder)


def test_oversized_image_in_a_camera_folder_is_refused_before_decoding(tmp_path, monkeypatch):
    """It used to be decoded whatever its size (20000x20000 -> SIGSEGV in MOG2)."""
    frames = _walker(12)
    frames[5] = np.zeros((1500, 1000), np.uint8)      # 1.5 MP, over the limit below
    folder = _folder(tmp_path, frames)
    monkeypatch.setenv("SSFT_MAX_IMAGE_PIXELS", "1000000")
    decoded = []
    for name in ("imread", "imdecode"):
        real = getattr(cv2, name)

        def spy(*a, _real=real, **k):
            img = _real(*a, **k)
            if img is not None:
                decoded.append(img.shape[0] * img.shape[1])
            return img

        monkeypatch.setattr(cv2, name, spy)
    seq = ImageSequence(folder)
    got = [seq.read() for _ in range(12)]
    assert seq.read() is None
    assert max(decoded) <= 1_000_000                        # never decoded, only its header read
    assert got[5].size == 0 and all(g.size for i, g in enumerate(got) if i != 5)


def test_oversized_image_is_skipped_and_counted_and_the_camera_goes_on(tiny_runtime, tmp_path,
                                                                        monkeypatch):
    frames = _walker(30)
    frames[10] = np.zeros((1500, 1000), np.uint8)
    monkeypatch.setenv("SSFT_MAX_IMAGE_PIXELS", "1000000")
    spec = CameraSpec("t", _folder(tmp_path, frames), "ir")
    s = VideoPipeline(tiny_runtime, [spec], "motion", config=PipelineConfig(every=2)).run()
    cam = s["cameras"]["t"]
    assert cam["processed"] == 29 and cam["corrupt"] == 1 and cam["error"] is None


def test_mixed_frame_sizes_are_resized_counted_and_all_written(tiny_runtime, tmp_path):
    """The annotated video used to lose every frame whose size differed from the first one."""
    frames = _walker(47)
    for i in range(1, 47, 2):                               # 23 frames of another size
        frames[i] = cv2.resize(frames[i], (200, 120))
    spec = CameraSpec("m", _folder(tmp_path, frames), "rgb")
    out = tmp_path / "out"
    s = VideoPipeline(tiny_runtime, [spec], "motion", out=out,
                      config=PipelineConfig(every=2)).run()
    cam = s["cameras"]["m"]
    assert cam["processed"] == 47 and cam["resized"] == 23 and cam["error"] is None
    cap = cv2.VideoCapture(str(out / "m.avi"))
    n, shapes = 0, set()
    while True:
        ok, img = cap.read()
        if not ok:
            break
        n, shapes = n + 1, shapes | {img.shape[:2]}
    cap.release()
    assert n == 47 and shapes == {(96, 160)}


def test_percentile_stretch_falls_back_to_min_max_when_the_percentiles_meet():
    """A flat 16-bit background with a person on < 1% of the pixels used to map to all zeros."""
    raw = np.full((200, 200), 29000, np.uint16)
    raw[100:130, 50:60] = 31000                               # 300 px = 0.75 %
    out = to_uint8(raw)
    assert out[100:130, 50:60].min() == 255 and out.max() == 255
    assert out[:90].max() == 0
    assert Stretch().window(raw) == (29000.0, 31000.0)
    assert Stretch().apply(np.full((8, 8), 7, np.uint16)).max() == 0     # truly flat: still 0
    assert to_uint8(np.full((8, 8), 300.5, np.float32)).max() == 0
