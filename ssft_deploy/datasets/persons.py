"""Synthetic cross-modality person crops: identities with shared and modality-specific cues.

Each identity carries

- shared cues, visible in both modalities: body shape (height, shoulder / hip / leg width, head
  size, hair length), where the top garment ends (shirt vs. long coat), an accessory (backpack, bag,
  hat) and the clothing texture (stripes, checks, dots with their frequency and phase);
- RGB-only cues: garment, skin, hair and accessory colours;
- IR-only cues: a thermal signature (body temperature level, head / garment emission ratios and a
  per-identity hot spot on the body).

Every image varies pose (leg spread, arm swing, facing), scale, position, background, camera
lighting, blur and noise, so re-identification has to be learnt and the shared / specific split
matters. Everything is drawn from numpy generators seeded by (seed, pid, camera, index), so an image
does not depend on the order in which images are generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PATTERNS = ("plain", "hstripe", "vstripe", "check", "diag", "dots")
ACCESSORIES = ("none", "backpack", "bag", "hat")
# label map codes
_BG, _SKIN, _HAIR, _TOP, _BOTTOM, _ACC, _ARM = range(7)


@dataclass(frozen=True)
class Identity:
    """Appearance parameters of one synthetic person (body units: fraction of body height)."""

    # shared
    shoulder: float
    hip: float
    leg: float
    head: float
    hair: float
    top_len: float
    accessory: int
    top_pattern: int
    top_freq: float
    top_phase: float
    contrast: float
    bottom_pattern: int
    bottom_freq: float
    height: float
    # RGB only
    colours: np.ndarray  # [7, 3] float32 per label, 0..255
    # IR only
    heat: np.ndarray  # [7] float32 per label, 0..1
    hotspot: tuple[float, float, float, float]  # u, v, radius, amplitude


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]):
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def make_identity(seed: int, pid: int) -> Identity:
    """The deterministic identity ``pid`` of the dataset generated with ``seed``."""
    rng = np.random.default_rng([seed, pid, 7919])
    colours = np.zeros((7, 3), np.float32)
    skin = rng.uniform(0.25, 1.0)
    colours[_SKIN] = np.array([225, 180, 150]) * skin + np.array([20, 15, 10])
    colours[_HAIR] = _hsv_colour(rng, (0.2, 0.8), (0.05, 0.5))
    colours[_TOP] = colours[_ARM] = _hsv_colour(rng, (0.0, 1.0), (0.15, 1.0))
    colours[_BOTTOM] = _hsv_colour(rng, (0.0, 0.9), (0.1, 0.9))
    colours[_ACC] = _hsv_colour(rng, (0.0, 1.0), (0.1, 1.0))
    base = rng.uniform(0.6, 0.9)
    heat = np.zeros(7, np.float32)
    heat[_SKIN] = min(1.0, base + rng.uniform(0.05, 0.2))
    heat[_HAIR] = base * rng.uniform(0.45, 0.8)
    heat[_TOP] = heat[_ARM] = base * rng.uniform(0.55, 0.95)
    heat[_BOTTOM] = base * rng.uniform(0.5, 0.95)
    heat[_ACC] = rng.uniform(0.2, 0.45)
    return Identity(
        shoulder=rng.uniform(0.2, 0.32), hip=rng.uniform(0.15, 0.24), leg=rng.uniform(0.055, 0.09),
        head=rng.uniform(0.04, 0.06), hair=rng.uniform(0.02, 0.09), top_len=rng.uniform(0.45, 0.72),
        accessory=int(rng.integers(len(ACCESSORIES))), top_pattern=int(rng.integers(len(PATTERNS))),
        top_freq=rng.uniform(2.0, 5.0), top_phase=rng.uniform(0, 2 * np.pi),
        contrast=rng.uniform(0.35, 0.6), bottom_pattern=int(rng.integers(3)),
        bottom_freq=rng.uniform(2.0, 4.0), height=rng.uniform(0.8, 0.97),
        colours=colours, heat=heat,
        hotspot=(rng.uniform(-0.08, 0.08), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.12),
                 rng.uniform(0.1, 0.3)),
    )


def _texture(kind: int, freq: float, phase: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Clothing texture in [-1, 1] as a function of body coordinates (so it scales with the body)."""
    name = PATTERNS[kind]
    if name == "plain":
        return np.zeros_like(u)
    a = 2 * np.pi * freq * v + phase
    b = 2 * np.pi * freq * 2.0 * u + phase
    if name == "hstripe":
        t = np.sin(a)
    elif name == "vstripe":
        t = np.sin(b)
    elif name == "check":
        t = np.sin(a) * np.sin(b) * 2.0
    elif name == "diag":
        t = np.sin(a + b)
    else:  # dots
        t = (np.sin(a) * np.sin(b) > 0.55) * 2.0 - 1.0
    return np.clip(t * 3.0, -1.0, 1.0)


@dataclass(frozen=True)
class Camera:
    """Per-camera viewing conditions: background palette, light, scale and blur."""

    bg: np.ndarray  # [2, 3] top / bottom background colour
    light: float
    cast: np.ndarray  # [3] colour cast
    scale: tuple[float, float]
    blur: float
    ir_ambient: float


def make_camera(seed: int, cam: int, cell: int | None = None) -> Camera:
    """The conditions of camera ``cam`` in the dataset of ``seed``; with ``cell`` (e.g. a person
    id) a fresh draw per cell, so a training set sees many backgrounds, lights and casts."""
    rng = np.random.default_rng([seed, cam, 104729] + ([] if cell is None else [cell]))
    return Camera(bg=rng.uniform(30, 220, (2, 3)).astype(np.float32), light=rng.uniform(0.75, 1.15),
                  cast=rng.uniform(0.85, 1.15, 3).astype(np.float32),
                  scale=(rng.uniform(0.78, 0.88), rng.uniform(0.92, 1.0)),
                  blur=rng.uniform(0.0, 0.6), ir_ambient=rng.uniform(0.08, 0.3))


def _poly(canvas: np.ndarray, pts: list[tuple[float, float]], label: int) -> None:
    cv2.fillPoly(canvas, [np.round(np.array(pts) * 16).astype(np.int32)], label, cv2.LINE_8, 4)


def _ellipse(canvas: np.ndarray, c, axes, label: int) -> None:
    cv2.ellipse(canvas, (round(c[0] * 16), round(c[1] * 16)),
                (max(1, round(axes[0] * 16)), max(1, round(axes[1] * 16))),
                0, 0, 360, label, -1, cv2.LINE_8, 4)


def _labels(ident: Identity, rng: np.random.Generator, size: tuple[int, int], scale: float):
    """Label map of one pose plus the body-coordinate grids (u, v) and a left/right flip."""
    h, w = size
    bh = h * ident.height * scale
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    top = (h - bh) * rng.uniform(0.2, 0.8)
    side = 1.0 if rng.random() < 0.5 else -1.0  # which way the person faces

    def p(u: float, v: float) -> tuple[float, float]:
        return (cx + side * u * bh, top + v * bh)

    lab = np.zeros((h, w), np.uint8)
    sw, hw, lw = ident.shoulder / 2, ident.hip / 2, ident.leg
    acc = ACCESSORIES[ident.accessory]
    if acc == "backpack":
        _poly(lab, [p(sw - 0.02, 0.18), p(sw + 0.07, 0.2), p(sw + 0.07, 0.44),
                    p(sw - 0.02, 0.44)], _ACC)
    spread = rng.uniform(0.0, 0.12)
    for s in (-1, 1):
        foot = s * (hw * 0.5 + spread * rng.uniform(0.5, 1.0))
        _poly(lab, [p(s * hw, 0.5), p(s * max(hw - lw * 1.6, 0.005), 0.5), p(foot - s * lw / 2, 0.98),
                    p(foot + s * lw / 2, 0.98)], _TOP)
    _poly(lab, [p(-sw, 0.16), p(sw, 0.16), p(hw, 0.53), p(-hw, 0.53)], _TOP)
    for s in (-1, 1):
        ang = rng.uniform(-0.35, 0.35)
        hand = p(s * (sw + 0.02) + np.sin(ang) * 0.3, 0.17 + np.cos(ang) * 0.32)
        cv2.line(lab, tuple(np.round(np.array(p(s * sw, 0.18)) * 16).astype(int)),
                 tuple(np.round(np.array(hand) * 16).astype(int)), _ARM,
                 max(1, round(0.055 * bh)), cv2.LINE_8, 4)
    _ellipse(lab, p(0, 0.075), (ident.head * 1.15 * bh, 0.068 * bh), _SKIN)
    _ellipse(lab, p(0.0, 0.03), (ident.head * 1.2 * bh, ident.hair * bh), _HAIR)
    if acc == "bag":
        _poly(lab, [p(-sw - 0.05, 0.42), p(-sw + 0.03, 0.42), p(-sw + 0.03, 0.55),
                    p(-sw - 0.05, 0.55)], _ACC)
    elif acc == "hat":
        _ellipse(lab, p(0.0, 0.01), (ident.head * 1.7 * bh, 0.03 * bh), _ACC)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = side * (xs - cx) / bh
    v = (ys - top) / bh
    lab[(lab == _TOP) & (v > ident.top_len)] = _BOTTOM
    return lab, u, v


def _patches(img: np.ndarray, rng: np.random.Generator, count: int, div: int, value) -> None:
    """Paint ``count`` random rectangles (up to 1/div of the image side) with ``value()``."""
    h, w = img.shape[:2]
    for _ in range(count):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        dy, dx = int(rng.integers(2, max(3, h // div))), int(rng.integers(2, max(3, w // div)))
        img[y0:y0 + dy, x0:x0 + dx] = value()


def render(ident: Identity, cam: Camera, modality: int, rng: np.random.Generator,
           size: tuple[int, int]) -> np.ndarray:
    """One crop of ``ident`` seen by ``cam``: RGB uint8 ``[H, W, 3]`` (IR: 3 equal channels)."""
    h, w = size
    lab, u, v = _labels(ident, rng, size, rng.uniform(*cam.scale))
    person = lab > 0
    cloth = (lab == _TOP) | (lab == _ARM)
    tex = np.where(cloth, _texture(ident.top_pattern, ident.top_freq, ident.top_phase, u, v), 0.0)
    tex = np.where(lab == _BOTTOM, _texture(ident.bottom_pattern, ident.bottom_freq, 0.0, u, v), tex)
    shade = 1.0 - 0.35 * np.clip(np.abs(u) / 0.2, 0, 1) ** 2  # round body, both modalities
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if modality == 0:
        bg = cam.bg[0] * (1 - ramp) + cam.bg[1] * ramp + rng.uniform(-25, 25, 3)
        bg = np.broadcast_to(bg, (h, w, 3)).copy()
        _patches(bg, rng, int(rng.integers(1, 4)), 2, lambda: rng.uniform(20, 235, 3))  # clutter
        fg = ident.colours[lab] * (1.0 + ident.contrast * tex)[..., None] * shade[..., None]
        img = np.where(person[..., None], fg, bg) * cam.light * rng.uniform(0.8, 1.2) * cam.cast
    else:
        bg = cam.ir_ambient * (1.2 - 0.4 * ramp[..., 0]) + rng.uniform(-0.05, 0.05)
        bg = np.broadcast_to(bg, (h, w)).copy()
        _patches(bg, rng, int(rng.integers(0, 3)), 3, lambda: rng.uniform(0.2, 0.6))  # warm objects
        hu, hv, hr, ha = ident.hotspot
        spot = ha * np.exp(-((u - hu) ** 2 + (v - hv) ** 2) / (2 * hr * hr))
        fg = (ident.heat[lab] * (1.0 + ident.contrast * tex) + spot) * (0.8 + 0.2 * shade)
        grey = np.where(person, fg, bg) * 255.0 * rng.uniform(0.85, 1.15)
        img = np.repeat(grey[..., None], 3, axis=2)
    sigma = cam.blur + rng.uniform(0.3, 0.9)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    noise = rng.standard_normal((h, w, 1 if modality else 3), dtype=np.float32)
    img += noise * rng.uniform(2.0, 8.0)
    return np.clip(img, 0, 255).astype(np.uint8)
