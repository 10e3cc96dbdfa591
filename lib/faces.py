"""Procedural cartoon faces: 64x64 RGB images and their attributes (hair colour, tilt, smile, ...),
each a pure function of (seed, index) from a counter-based hash. No I/O; data.py makes datasets of them.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

SIZE = 64  # faces are drawn SIZE x SIZE

# the palettes a face's skin, hair and eyes are drawn from (RGB in 0..1), and the names of their entries
_SKIN = np.array([[0.98, 0.85, 0.75], [0.94, 0.75, 0.62], [0.82, 0.60, 0.45], [0.62, 0.42, 0.29], [0.38, 0.25, 0.17]])
_HAIR = np.array([[0.07, 0.05, 0.05], [0.22, 0.13, 0.07], [0.42, 0.27, 0.14], [0.82, 0.66, 0.38],
                 [0.60, 0.25, 0.10], [0.70, 0.70, 0.70], [0.12, 0.10, 0.10], [0.33, 0.20, 0.10]])
_HAIR_NAMES = ("black", "dark brown", "brown", "blond", "red", "grey", "off-black", "chestnut")
_IRIS = np.array([[0.35, 0.20, 0.10], [0.18, 0.10, 0.05], [0.25, 0.45, 0.75], [0.30, 0.50, 0.30],
                 [0.45, 0.50, 0.55], [0.50, 0.40, 0.20]])
_IRIS_NAMES = ("brown", "dark brown", "blue", "green", "grey", "hazel")


def _attribute(kind: str, what: str, classes: tuple[str, ...] | None = None) -> dict:
    if classes is None:
        return {"kind": kind, "classes": None, "what": what}
    return {"kind": kind, "classes": len(classes), "what": what + ": " + ", ".join(f"{i} {c}" for i, c in enumerate(classes))}


# What face_attributes returns, in the units the drawing uses: the image spans -1..1 across, y points down.
ATTRIBUTES = {
    "hair_colour": _attribute("class", "hair palette entry", _HAIR_NAMES),
    "iris_colour": _attribute("class", "iris palette entry", _IRIS_NAMES),
    "skin_tone": _attribute("continuous", "place along the skin palette, 0 lightest .. 4 darkest"),
    "skin_class": _attribute("class", "skin palette entry nearest the tone (skin_tone rounded)",
                             ("lightest", "light", "medium", "dark", "darkest")),
    "tilt": _attribute("continuous", "head tilt in degrees, -13.7 .. 13.7; positive turns it clockwise as seen"),
    "face_x": _attribute("continuous", "face centre x, -0.1 .. 0.1 (image half-widths, right is positive)"),
    "face_y": _attribute("continuous", "face centre y, -0.02 .. 0.16 (image half-heights, down is positive)"),
    "face_width": _attribute("continuous", "half-width of the face ellipse, 0.46 .. 0.6 image half-widths"),
    "face_height": _attribute("continuous", "half-height of the face ellipse, 0.62 .. 0.78 image half-heights"),
    "hair_length": _attribute("continuous", "where the hair behind the head ends, -0.4 .. 1.4 face half-heights "
                                            "below the face centre"),
    "hair_width": _attribute("continuous", "width of the hair behind the head, 1 .. 1.35 face widths"),
    "fringe": _attribute("continuous", "how far down the forehead the fringe comes, 0.15 high .. 0.7 low"),
    "eye_open": _attribute("continuous", "eye height over eye width, 0.4 .. 0.75"),
    "eye_size": _attribute("continuous", "eye half-width, 0.15 .. 0.22 face half-widths"),
    "gaze_x": _attribute("continuous", "irises shifted along the head's x axis, -0.4 .. 0.4 (looking right is positive)"),
    "gaze_y": _attribute("continuous", "irises shifted along the head's y axis, -0.4 .. 0.4 (looking down is positive)"),
    "smile": _attribute("continuous", "bend of the mouth, -0.04 frown .. 0.1 smile"),
    "mouth_open": _attribute("continuous", "how far the mouth is open, 0 .. 0.08"),
    "mouth_width": _attribute("continuous", "mouth half-width, 0.22 .. 0.42 face half-widths"),
    "blush": _attribute("continuous", "opacity of the cheeks' blush, 0 .. 0.4"),
    "shirt_brightness": _attribute("continuous", "mean RGB of the shirt, 0.05 .. 0.95"),
    "background_brightness": _attribute("continuous", "mean RGB of the background gradient's two ends, 0 .. 1"),
    "light": _attribute("continuous", "strength of the side light, 0 .. 0.3"),
}


def synthetic_faces(start: int, count: int, seed: int = 0) -> torch.Tensor:
    """Faces number start .. start+count-1 as uint8 [count, 3, 64, 64]; face i depends only on (seed, i)."""
    # Per pixel only exactly rounded operations are used (+ - * / sqrt abs min max clamp frac floor,
    # no exp or sin): vector and scalar code agree, so a face is bit-identical alone or in any block.
    parts = [torch.empty(0, 3, SIZE, SIZE, dtype=torch.uint8)]
    for first in range(start, start + count, 64):  # blocks keep the working set in cache
        index = np.arange(first, min(first + 64, start + count), dtype=np.uint64)
        look = {name: torch.from_numpy(value).float() for name, value in _face_params(seed, index).items()}
        parts.append(_draw_faces(look, _pixel_noise(seed, index)))
    return torch.cat(parts)


def face_attributes(start: int, count: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Attributes of faces start .. start+count-1 without drawing them: (name -> float32 [count], ATTRIBUTES).

    They come from the very numbers the drawing uses, so face i's attributes depend only on (seed, i)."""
    p = _face_params(seed, np.arange(start, start + count, dtype=np.uint64))
    values = {
        "hair_colour": p["hair_class"], "iris_colour": p["iris_class"],
        "skin_tone": p["tone"], "skin_class": np.floor(p["tone"] + 0.5),
        "tilt": np.degrees(2 * np.arctan(p["tilt_tan_half"])),
        "face_x": p["cx"], "face_y": p["cy"], "face_width": p["ax"], "face_height": p["ay"],
        "hair_length": p["hair_len"], "hair_width": p["hair_w"], "fringe": p["fringe"],
        "eye_open": p["eye_open"], "eye_size": p["eye_w"], "gaze_x": p["gaze"][:, 0], "gaze_y": p["gaze"][:, 1],
        "smile": p["smile"], "mouth_open": p["mouth_open"], "mouth_width": p["mouth_w"], "blush": p["blush"],
        "shirt_brightness": p["shirt"].mean(1), "background_brightness": ((p["bg1"] + p["bg2"]) / 2).mean(1),
        "light": p["light"],
    }
    return ({name: torch.from_numpy(np.asarray(v, dtype=np.float32)) for name, v in values.items()},
            {name: dict(about) for name, about in ATTRIBUTES.items()})


_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _mix64(x):
    """splitmix64's finaliser: scrambles uint64 values (a numpy array or a Python int)."""
    if isinstance(x, int):
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & _MASK64
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)  # uint64 arrays wrap on overflow, as wanted
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_uniform(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), a pure function of (seed, stream, counter): a counter-based RNG."""
    key = _mix64((_mix64(seed & _MASK64) + stream * _GOLDEN) & _MASK64)
    x = _mix64(counter * np.uint64(_GOLDEN) + np.uint64(key))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _pixel_noise(seed: int, index: np.ndarray) -> torch.Tensor:
    """Uniform noise in [-1, 1) per face and pixel, shaped [B, 1, 64, 64]."""
    pixel = index[:, None] * np.uint64(SIZE * SIZE) + np.arange(SIZE * SIZE, dtype=np.uint64)
    noise = _hash_uniform(seed, 2**32, pixel) * 2 - 1
    return torch.from_numpy(noise).float().view(-1, 1, SIZE, SIZE)


def _face_params(seed: int, index: np.ndarray) -> dict[str, np.ndarray]:
    """Random look of each face in `index`, every number from its own hash stream, with the palette
    entries chosen (hair_class, iris_class, tone) kept for face_attributes."""
    stream = itertools.count()

    def uniform(low, high, width=0):  # [B], or [B, width]
        u = np.stack([_hash_uniform(seed, next(stream), index) for _ in range(max(width, 1))], -1)
        return low + (high - low) * (u if width else u[:, 0])

    def pick(palette, jitter):  # (colour, index of the palette entry it jitters)
        choice = np.minimum((uniform(0, 1) * len(palette)).astype(int), len(palette) - 1)
        return np.clip(palette[choice] + uniform(-jitter, jitter, 3), 0, 1), choice

    p = {}
    tone = uniform(0, len(_SKIN) - 1)  # skin tone slides along the palette
    low = np.minimum(tone.astype(int), len(_SKIN) - 2)
    frac = (tone - low)[:, None]
    p["skin"] = np.clip(_SKIN[low] * (1 - frac) + _SKIN[low + 1] * frac + uniform(-0.03, 0.03, 3), 0, 1)
    p["tone"] = tone
    p["hair"], p["hair_class"] = pick(_HAIR, 0.06)
    p["iris"], p["iris_class"] = pick(_IRIS, 0.05)
    p["shirt"] = uniform(0.05, 0.95, 3)
    p["lip"] = np.clip(p["skin"] * [0.85, 0.52, 0.52] + uniform(0, 0.3)[:, None] * [0.5, 0, 0.05], 0, 1)
    p["bg1"] = uniform(0.1, 0.95, 3)
    p["bg2"] = np.clip(p["bg1"] + uniform(-0.35, 0.35, 3), 0, 1)
    p["bg_dir"] = uniform(-1, 1, 2)
    p["light_dir"] = uniform(-1, 1, 2)
    p["light"] = uniform(0.0, 0.3)
    p["cx"], p["cy"] = uniform(-0.1, 0.1), uniform(-0.02, 0.16)
    p["ax"], p["ay"] = uniform(0.46, 0.6), uniform(0.62, 0.78)
    t = uniform(-0.12, 0.12)  # head tilt as tan(angle / 2): cos and sin by rational formulas, no trig
    p["cos"], p["sin"], p["tilt_tan_half"] = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t), t
    p["hair_w"], p["hair_h"], p["hair_up"] = uniform(1.0, 1.35), uniform(1.0, 1.25), uniform(0.05, 0.25)
    p["hair_len"] = uniform(-0.4, 1.4)  # where the hair behind the head ends, in face half-heights
    p["fringe"] = uniform(0.15, 0.7)  # how far down the forehead the hair comes
    p["fringe_slant"] = uniform(-0.3, 0.3)
    p["fringe_waves"], p["fringe_phase"], p["fringe_amp"] = uniform(1, 4), uniform(0, 1), uniform(0, 0.12)
    p["eye_y"], p["eye_dx"] = uniform(-0.3, -0.05), uniform(0.36, 0.46)
    p["eye_w"], p["eye_open"] = uniform(0.15, 0.22), uniform(0.4, 0.75)
    p["gaze"] = uniform(-0.4, 0.4, 2)
    p["brow_gap"], p["brow_arch"], p["brow_tilt"] = uniform(0.06, 0.16), uniform(0.0, 0.06), uniform(-0.2, 0.2)
    p["brow_w"] = uniform(0.015, 0.035)
    p["mouth_y"], p["mouth_w"] = uniform(0.38, 0.58), uniform(0.22, 0.42)
    p["smile"], p["mouth_open"] = uniform(-0.04, 0.1), uniform(0.0, 0.08)
    p["blush"] = uniform(0.0, 0.4)
    return p


_WHITE = torch.tensor([0.97, 0.97, 0.95])[None, :, None, None]
_DARK = torch.tensor([0.03, 0.03, 0.03])[None, :, None, None]
_GLINT = torch.tensor([1.0, 1.0, 1.0])[None, :, None, None]
_BLUSH = torch.tensor([0.9, 0.4, 0.45])[None, :, None, None]
_MOUTH = torch.tensor([0.25, 0.05, 0.06])[None, :, None, None]


def _smooth(d: torch.Tensor, width: float = 1.0) -> torch.Tensor:
    """Coverage of a shape from its signed distance `d` (< 0 inside), blurred over `width` pixels."""
    return (0.5 - d * (SIZE / 2 / width)).clamp_(0, 1)


def _ellipse(x, y, ax, ay) -> torch.Tensor:
    """Approximate signed distance to the ellipse with half-axes ax, ay centred at the origin."""
    r = torch.sqrt((x / ax) * (x / ax) + (y / ay) * (y / ay))
    return (r - 1) * torch.sqrt(torch.as_tensor(ax * ay))


def _paint(image: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Lay `colour` [B or 1, 3, 1, 1] over `image` in place where `mask` [B, H, W] covers it."""
    return image.add_((colour - image).mul_(mask[:, None]))


def _draw_faces(f: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
    """Render faces back to front: background, hair, body, head, features, then light and noise."""
    def one(name, i=None):  # a per-face number shaped [B, 1, 1] to broadcast over the grid
        return (f[name] if i is None else f[name][:, i])[:, None, None]

    def colour(name):
        return f[name][:, :, None, None]

    coords = (torch.arange(SIZE, dtype=torch.float32) + 0.5) * (2 / SIZE) - 1
    y, x = coords[None, :, None], coords[None, None, :]  # in [-1, 1], y points down
    cx, cy, ax, ay = one("cx"), one("cy"), one("ax"), one("ay")
    # head coordinates: centred on the face and tilted with it; paired features (eyes, ears, ...)
    # are drawn once in the mirrored coordinate `side_u`, at half the cost
    u = (x - cx) * one("cos") + (y - cy) * one("sin")
    v = (y - cy) * one("cos") - (x - cx) * one("sin")
    side, side_u = torch.sign(u), u.abs()

    ramp = (0.5 + 0.4 * (x * one("bg_dir", 0) + y * one("bg_dir", 1))).clamp(0, 1)
    image = colour("bg1") + (colour("bg2") - colour("bg1")) * ramp[:, None]

    # hair behind the head: a big ellipse, cut off where the hair ends
    back = _smooth(_ellipse(u, v + ay * one("hair_up"), ax * one("hair_w"), ay * one("hair_h")))
    back = back.mul_(_smooth(v - ay * one("hair_len"), 2))
    _paint(image, back, colour("hair") * 0.8)

    neck = _smooth(torch.maximum((x - cx).abs() - ax * 0.45, cy + ay * 0.5 - y))
    _paint(image, neck, colour("skin") * 0.8)
    _paint(image, _smooth(_ellipse(x - cx * 0.5, y - 1.25, 0.85, 0.4)), colour("shirt"))
    ears = _smooth(_ellipse(side_u - ax * 0.98, v - ay * 0.05, ax * 0.16, ay * 0.2))
    _paint(image, ears, colour("skin") * 0.88)

    face_d = _ellipse(u, v, ax, ay)
    face = _smooth(face_d)
    r2 = ((u / ax) * (u / ax) + (v / ay) * (v / ay)).clamp_(0, 1)
    shaded = colour("skin") * (1.04 - 0.2 * r2)[:, None]  # darker towards the rim: a rounder head
    image.add_((shaded - image).mul_(face[:, None]))

    # fringe: the top of the head covered down to a slanted, scalloped line
    wave = torch.frac((u / ax) * one("fringe_waves") + one("fringe_phase"))
    line = ay * (one("fringe") - 1 + one("fringe_slant") * u / ax) + one("fringe_amp") * 4 * wave * (1 - wave)
    _paint(image, _smooth(face_d - 0.015).mul_(_smooth(v - line)), colour("hair"))

    ey, ew = one("eye_y") * ay, one("eye_w") * ax
    eh = ew * one("eye_open")
    blush = _smooth(_ellipse(side_u - ax * 0.5, v - ey - ay * 0.3, ax * 0.2, ax * 0.13), 4)
    _paint(image, blush.mul_(face).mul_(one("blush")), _BLUSH)

    # eyes (white, iris, pupil, glint) with brows above; gaze and glint do not mirror
    eu, ev = side_u - one("eye_dx") * ax, v - ey
    white = _smooth(_ellipse(eu, ev, ew, eh))
    _paint(image, white, _WHITE)
    iu, iv = eu - side * one("gaze", 0) * ew * 0.5, ev - one("gaze", 1) * eh * 0.3
    iris_r = eh * 0.95
    _paint(image, _smooth(_ellipse(iu, iv, iris_r, iris_r)).mul_(white), colour("iris"))
    _paint(image, _smooth(_ellipse(iu, iv, iris_r * 0.5, iris_r * 0.5)).mul_(white), _DARK)
    glint = _smooth(_ellipse(iu + side * iris_r * 0.35, iv + iris_r * 0.35, iris_r * 0.22, iris_r * 0.22))
    _paint(image, glint.mul_(white), _GLINT)
    bu = eu / (ew * 1.3)
    brow_y = -eh - one("brow_gap") * ay - one("brow_arch") * (1 - bu * bu) + one("brow_tilt") * eu
    brow = _smooth(torch.maximum((ev - brow_y).abs() - one("brow_w"), (bu.abs() - 1) * ew))
    _paint(image, brow, colour("hair") * 0.7)

    # nose: a soft shadow
    my = one("mouth_y") * ay
    nose = _smooth(_ellipse(u + ax * 0.05, v - (ey + my) * 0.55, ax * 0.08, ay * 0.12), 3)
    _paint(image, nose.mul_(face).mul_(0.3), colour("skin") * 0.55)

    # mouth: lips between two parabolas bent by the smile; an open mouth shows its dark inside
    mw = one("mouth_w") * ax
    mu = u / mw
    bend = (1 - mu * mu).clamp_(0, 1)
    gap = (v - (my + one("smile") * bend)).abs_()
    half = (0.02 + one("mouth_open")) * bend + 0.012
    _paint(image, _smooth(torch.maximum(gap - half, (mu.abs() - 1) * mw)), colour("lip"))
    _paint(image, _smooth(torch.maximum(gap - half + 0.03, (mu.abs() - 0.85) * mw)), _MOUTH)

    light = 1 + one("light") * (x * one("light_dir", 0) + y * one("light_dir", 1))
    image.mul_(light[:, None]).add_(noise * 0.015)
    return image.clamp_(0, 1).mul_(255).add_(0.5).floor_().to(torch.uint8)
