"""Datasets of 64x64 RGB faces as uint8 tensors, decoded once and cached.

Three sources, chosen with --dataset:
  synthetic  cartoon faces drawn here (synthetic_faces); offline, instant, the default.
  celeba     CelebA aligned faces (official train/valid/test partition), from --data-root.
  folder     any folder tree of images, split into train/test by --split-seed.
CelebA and folder trees are read and decoded by lib/images.py, imported only for them.

`load_split` returns a whole split as one uint8 tensor [N, 3, 64, 64] (the full CelebA training
set is 2 GB this way) and `batches` turns it into float batches in [0, 1] on the device. The
first use of a split writes it to `--cache-dir`; the cache is keyed by every setting that
changes its pixels and by a fingerprint of the source files, and anything that does not match
is rebuilt rather than trusted. The cache also records which file each row came from.

The attributes of the images, for linear probes, are lib/probe.py's (load_labels).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from lib import cli
from lib.cli import positive_int
from lib.files import CACHE_FORMAT, CheckpointError, UserError, load_checkpoint, plain_equal, save_checkpoint

SPLITS = ("train", "valid", "test")
DATASETS = ("synthetic", "celeba", "folder")
SIZE = 64  # images of every dataset are SIZE x SIZE, the size the synthetic faces are drawn at
CACHE_KIND = CACHE_FORMAT
CACHE_VERSION = 1  # bump when decoding or drawing changes, so old caches are rebuilt
SYNTHETIC_SEED = 0
SYNTHETIC_START = {"train": 0, "valid": 10**8, "test": 2 * 10**8}  # disjoint index ranges

DEFAULTS = {"dataset": "synthetic", "data_root": None, "download": False, "n_train": None, "n_test": None,
            "synthetic_size": 10000, "test_fraction": 0.1, "split_seed": 0, "cache_dir": "data/cache"}

# ---------------------------------------------------------------- command line and config

def add_data_args(parser: argparse.ArgumentParser, inherit: bool = False) -> None:
    """Add the data flags; with `inherit` every default is None, to be filled from a checkpoint."""
    default = lambda value: None if inherit else value  # noqa: E731
    shown = lambda text: "as the endpoints" if inherit else text  # noqa: E731
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, default=default("synthetic"),
                       help=f"which images to use (default: {shown('synthetic')})")
    group.add_argument("--data-root", metavar="DIR", default=None,
                       help=f"folder holding CelebA or the image tree for --dataset celeba/folder "
                            f"(default: {shown('none')})")
    group.add_argument("--download", action="store_true", default=default(False),
                       help="download CelebA into --data-root if it is not there (needs internet)")
    group.add_argument("--n-train", type=positive_int, metavar="N", default=None,
                       help=f"use only the first N training images (default: {shown('all')})")
    group.add_argument("--n-test", type=positive_int, metavar="N", default=None,
                       help=f"use only the first N validation and test images (default: {shown('all')})")
    group.add_argument("--synthetic-size", type=positive_int, metavar="N", default=default(10000),
                       help=f"number of synthetic training images; valid and test get N//5 each "
                            f"(default: {shown('10000')})")
    group.add_argument("--test-fraction", type=float, metavar="F", default=default(0.1),
                       help=f"share of a --dataset folder tree held out for testing (default: {shown('0.1')})")
    group.add_argument("--split-seed", type=int, metavar="S", default=default(0),
                       help=f"seed of the train/test split of a --dataset folder tree (default: {shown('0')})")
    group.add_argument("--cache-dir", metavar="DIR", default=default("data/cache"),
                       help=f"where decoded splits are cached (default: {shown('data/cache')})")


def data_config(args: argparse.Namespace, base: dict | None = None) -> dict:
    """The data settings as a plain dict: from `args`, else from `base`, else the defaults; validated."""
    base = base or {}
    config = {}
    for key, default in DEFAULTS.items():
        value = getattr(args, key, None)
        if value is None:
            value = base.get(key)
        config[key] = default if value is None else value
    return _validated(config)


def _validated(config: dict) -> dict:
    """Check a data config (it may come from an old checkpoint) and normalise its types."""
    config = {**DEFAULTS, **config}
    if config["dataset"] not in DATASETS:
        raise UserError(f"unknown dataset {config['dataset']!r}; choose one of {', '.join(DATASETS)}")
    if config["dataset"] != "synthetic" and not config["data_root"]:
        raise UserError(f"--dataset {config['dataset']} needs --data-root DIR, the folder that holds the images")
    for key in ("n_train", "n_test", "synthetic_size"):
        value = config[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"--{key.replace('_', '-')} must be an integer >= 1, got {value!r}")
    fraction = config["test_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise UserError(f"--test-fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if isinstance(config["split_seed"], bool) or not isinstance(config["split_seed"], int):
        raise UserError(f"--split-seed must be an integer, got {config['split_seed']!r}")
    config["test_fraction"] = float(fraction)
    config["download"] = bool(config["download"])
    config["cache_dir"] = str(config["cache_dir"])
    if config["data_root"] is not None:
        config["data_root"] = str(config["data_root"])
    return config


# ---------------------------------------------------------------- loading, caching, batching

def load_split(config: dict, split: str, progress: bool = True) -> torch.Tensor:
    """One split as a contiguous uint8 tensor [N, 3, 64, 64], from the cache if valid, else built and cached.

    A folder tree has no validation part: 'valid' gives its test split, so scripts run unchanged.
    """
    return _load(config, split, progress)[0]


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                  drop_last: bool = False) -> Iterator[torch.Tensor | slice]:
    """Which of n images form each batch: slices in order, or index tensors shuffled by torch.randperm(n, generator=generator)."""
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size] if shuffle else slice(start, start + batch_size)


def to_batch(chunk: torch.Tensor, device: torch.device | str = "cpu",
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 images as a float32 batch in [0, 1] on `device`."""
    chunk = chunk.to(device, non_blocking=True)  # move uint8 and convert there: a quarter of the bytes of float32 cross the bus
    return chunk.to(dtype=torch.float32, memory_format=memory_format).div_(255)


def batches(images: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, device: torch.device | str = "cpu",
            drop_last: bool = False, memory_format: torch.memory_format = torch.contiguous_format,
            ) -> Iterator[torch.Tensor]:
    """Float32 batches in [0, 1] on `device`; shuffled by torch.randperm(N, generator=generator)."""
    for index in batch_indices(len(images), batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last):
        yield to_batch(images[index], device, memory_format)


def _cache_path(cache_dir: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{key['dataset']}-{key['split']}-{digest[:12]}.pt"


def _load(config: dict, split: str, progress: bool, need_files: bool = False) -> tuple[torch.Tensor, list[str] | None]:
    """A split's images and the source file of each row (None for synthetic faces), from the cache if
    valid, else built and cached; with `need_files`, a cache that cannot say which files it holds is rebuilt."""
    config = _validated(config)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if config["dataset"] == "synthetic":
        key, build, planned = _synthetic_plan(config, split)
    else:  # image files on disk: lib/images.py, imported only for them
        files_module = cli.optional("images", f"--dataset {config['dataset']}")
        key, build, planned = getattr(files_module, f"{config['dataset']}_plan")(config, split)
    key = {"version": CACHE_VERSION, "size": SIZE, **key}
    path = _cache_path(config["cache_dir"], key)
    cached = _read_cache(path, key, planned)
    if cached is not None and (cached[1] is not None or not need_files):
        return cached
    if cached is not None:
        print(f"warning: data cache {path} does not record which files its images come from; rebuilding it",
              file=sys.stderr)
    images, skipped, files = build(progress)
    _write_cache(path, key, images, skipped, files)
    return images, files


def _read_cache(path: Path, key: dict, planned: list[str] | None) -> tuple[torch.Tensor, list[str] | None] | None:
    """(images, source file of each row) if `path` holds a sound cache made with exactly `key`, else None."""
    if not path.exists():
        return None
    try:
        data = load_checkpoint(path, CACHE_KIND, required=("images", "key"))
    except CheckpointError as e:
        print(f"warning: the data cache is unusable ({e}); rebuilding it", file=sys.stderr)
        return None
    images = data["images"]
    if not plain_equal(data["key"], key):
        problem = "was made with other settings or from other files"
    elif not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 \
            or images.dim() != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE) or len(images) == 0:
        problem = "does not hold uint8 images of shape [N, 3, 64, 64]"
    else:
        return images.contiguous(), _cached_files(data.get("files"), len(images), planned)
    print(f"warning: data cache {path} {problem}; rebuilding it", file=sys.stderr)
    return None


def _cached_files(files: object, count: int, planned: list[str] | None) -> list[str] | None:
    """The source file of each cached row: as the cache records it; in a cache written before files
    were recorded, the planned files if all of them were decoded; else None (it cannot be told)."""
    if isinstance(files, list) and len(files) == count and all(isinstance(f, str) for f in files):
        return files
    return planned if planned is not None and len(planned) == count else None


def _write_cache(path: Path, key: dict, images: torch.Tensor, skipped: int, files: list[str] | None) -> None:
    # a cache that cannot be written only costs time next run, so say so and carry on
    try:
        save_checkpoint(path, CACHE_KIND, {"images": images, "key": key, "skipped": skipped, "files": files})
    except UserError as e:
        print(f"warning: could not write the data cache ({e}); pass a writable --cache-dir", file=sys.stderr)


# ---------------------------------------------------------------- synthetic faces: the splits

def _synthetic_range(config: dict, split: str) -> tuple[int, int]:
    """(first face index, number of faces) of a synthetic split, capped by --n-train/--n-test."""
    size = config["synthetic_size"] if split == "train" else max(1, config["synthetic_size"] // 5)
    cap = config["n_train"] if split == "train" else config["n_test"]
    return SYNTHETIC_START[split], min(size, cap or size)


def _synthetic_plan(config: dict, split: str) -> tuple[dict, Callable, None]:
    """Cache key and builder of a synthetic split (a fixed range of face indices); no source files."""
    start, count = _synthetic_range(config, split)
    key = {"dataset": "synthetic", "split": split, "seed": SYNTHETIC_SEED, "start": start, "count": count}

    def build(progress: bool) -> tuple[torch.Tensor, int, None]:
        parts = []
        with tqdm(total=count, desc=f"drawing synthetic {split}", unit="img", disable=not progress) as bar:
            for i in range(0, count, 1024):
                parts.append(synthetic_faces(start + i, min(1024, count - i), SYNTHETIC_SEED))
                bar.update(len(parts[-1]))
        return torch.cat(parts), 0, None

    return key, build, None


# ---------------------------------------------------------------- synthetic faces: drawing
# Procedural cartoon faces: 64x64 RGB images and their attributes (hair colour, tilt, smile, ...), each a pure
# function of (seed, index) from a counter-based hash, so any face can be drawn alone, in any order, bit-identically.

# the palettes a face's skin, hair and eyes are drawn from (RGB in 0..1); lib/probe.py names their entries
_SKIN = np.array([[0.98, 0.85, 0.75], [0.94, 0.75, 0.62], [0.82, 0.60, 0.45], [0.62, 0.42, 0.29], [0.38, 0.25, 0.17]])
_HAIR = np.array([[0.07, 0.05, 0.05], [0.22, 0.13, 0.07], [0.42, 0.27, 0.14], [0.82, 0.66, 0.38],
                 [0.60, 0.25, 0.10], [0.70, 0.70, 0.70], [0.12, 0.10, 0.10], [0.33, 0.20, 0.10]])
_IRIS = np.array([[0.35, 0.20, 0.10], [0.18, 0.10, 0.05], [0.25, 0.45, 0.75], [0.30, 0.50, 0.30],
                 [0.45, 0.50, 0.55], [0.50, 0.40, 0.20]])


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
