"""Datasets of 64x64 RGB faces as uint8 tensors, decoded once and cached.

Three sources, chosen with --dataset:
  synthetic  cartoon faces drawn by faces.py; offline, instant, the default.
  celeba     CelebA aligned faces (official train/valid/test partition), from --data-root.
  folder     any folder tree of images, split into train/test by --split-seed.

`load_split` returns a whole split as one uint8 tensor [N, 3, 64, 64] (the full CelebA training
set is 2 GB this way) and `batches` turns it into float batches in [0, 1] on the device. The
first use of a split writes it to `--cache-dir`; the cache is keyed by every setting that
changes its pixels and by a fingerprint of the source files, and anything that does not match
is rebuilt rather than trusted. The cache also records which file each row came from.

`load_labels` gives attributes aligned row for row with `load_split`, for linear probes: the
drawn attributes of synthetic faces (faces.ATTRIBUTES) or CelebA's 40 binary attributes; a
folder tree has none (`labels_unavailable` says why).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from lib import faces
from lib.cli import positive_int
from lib.files import CheckpointError, UserError, load_checkpoint, plain_equal, save_checkpoint

SPLITS = ("train", "valid", "test")
DATASETS = ("synthetic", "celeba", "folder")
SIZE = faces.SIZE  # images of every dataset are SIZE x SIZE, the size faces are drawn at
CELEBA_CROP = 148  # the usual centre crop of CelebA's 178x218 aligned faces before resizing
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CACHE_KIND = "aemc-cache-v1"
CACHE_VERSION = 1  # bump when decoding or drawing changes, so old caches are rebuilt
SYNTHETIC_SEED = 0
SYNTHETIC_START = {"train": 0, "valid": 10**8, "test": 2 * 10**8}  # disjoint index ranges

DEFAULTS = {
    "dataset": "synthetic",
    "data_root": None,
    "download": False,
    "n_train": None,
    "n_test": None,
    "synthetic_size": 10000,
    "test_fraction": 0.1,
    "split_seed": 0,
    "cache_dir": "data/cache",
}

CELEBA_LAYOUT = ("{root}/celeba/img_align_celeba/*.jpg with {root}/celeba/list_eval_partition.txt, "
                 "or Kaggle's {root}/img_align_celeba/img_align_celeba/*.jpg with {root}/list_eval_partition.csv")


# ---------------------------------------------------------------- command line and config

def add_data_args(parser: argparse.ArgumentParser, inherit: bool = False) -> None:
    """Add the data flags; with `inherit` every default is None, to be filled from a checkpoint."""
    def default(value):
        return None if inherit else value

    def shown(text):
        return "as the endpoints" if inherit else text

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


def load_labels(config: dict, split: str, progress: bool = True,
                ) -> tuple[dict[str, torch.Tensor], dict[str, dict]] | None:
    """Attributes of a split's images, row for row with `load_split`: (name -> float32 [N], name ->
    {"kind": "class" or "continuous", "classes": k or None, "what": text}), or None (see labels_unavailable).

    Synthetic faces: faces.ATTRIBUTES. CelebA: its 40 binary attributes (0 absent, 1 present), read
    from list_attr_celeba.txt or .csv for the files the split's cache holds.
    """
    config = _validated(config)
    _check_split(split)
    if labels_unavailable(config):
        return None
    if config["dataset"] == "synthetic":
        start, count = _synthetic_range(config, split)
        return faces.face_attributes(start, count, SYNTHETIC_SEED)
    _, files = _load(config, split, progress, need_files=True)
    attributes = _find_celeba(Path(config["data_root"]).expanduser())[2]
    if attributes is None:  # --download fetched the images but not the attributes
        return None
    names, row_of, table = _read_attributes(attributes)
    rows = []
    for name in files:
        if name not in row_of:
            raise UserError(f"{attributes} has no row for {name}; replace it with CelebA's original")
        rows.append(row_of[name])
    present = torch.from_numpy(table[rows] == 1).float()  # [N, attributes]
    values = {name: present[:, j].contiguous() for j, name in enumerate(names)}
    about = {name: {"kind": "class", "classes": 2, "what": f"CelebA attribute {name}: 0 absent, 1 present"}
             for name in names}
    return values, about


def labels_unavailable(config: dict) -> str | None:
    """Why `load_labels` gives None for this config, in a few words (for a note); None when it gives labels."""
    config = _validated(config)
    if config["dataset"] == "folder":
        return "a --dataset folder tree has no attribute labels"
    if config["dataset"] == "celeba":
        root = Path(config["data_root"]).expanduser()
        image_dir, partition, attributes = _find_celeba(root)
        if image_dir is not None and partition is not None and attributes is None:
            return f"CelebA under {root} has no list_attr_celeba.txt or .csv beside {partition.name}"
    return None


def validation_images(config: dict, count: int) -> tuple[torch.Tensor, str]:
    """The first `count` images of the validation split, for choices that must never see the test
    split, and where they came from: a folder tree has no validation part ('valid' is its test
    split), so its last `count` training images are carved off instead."""
    if _validated(config)["dataset"] == "folder":
        train = load_split(config, "train")
        return train[-count:], f"the last {min(count, len(train))} training images (a folder tree has no validation split)"
    valid = load_split(config, "valid")[:count]
    return valid, f"the first {len(valid)} images of the validation split"


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
    _check_split(split)
    plan = {"synthetic": _synthetic_plan, "celeba": _celeba_plan, "folder": _folder_plan}[config["dataset"]]
    key, build, planned = plan(config, split)
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


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


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


# ---------------------------------------------------------------- synthetic faces (drawn by faces.py)

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
                parts.append(faces.synthetic_faces(start + i, min(1024, count - i), SYNTHETIC_SEED))
                bar.update(len(parts[-1]))
        return torch.cat(parts), 0, None

    return key, build, None


# ---------------------------------------------------------------- CelebA

def _celeba_plan(config: dict, split: str) -> tuple[dict, Callable, list[str]]:
    """Cache key, builder and file names of a CelebA split: the official partition, in a fixed shuffled order."""
    root = Path(config["data_root"]).expanduser()  # --download may create it
    image_dir, partition, _ = _find_celeba(root)
    if (image_dir is None or partition is None) and config["download"]:
        _download_celeba(root)
        image_dir, partition, _ = _find_celeba(root)
    if image_dir is None or partition is None:
        found = ("the folder does not exist" if not root.is_dir() else
                 f"found {image_dir} but no list_eval_partition.txt or .csv beside it" if image_dir else
                 "found no img_align_celeba folder")
        raise UserError(f"CelebA is not complete under {root} ({found}); expected "
                        f"{CELEBA_LAYOUT.format(root=root)}, or pass --download")
    on_disk = {entry.name: entry.stat() for entry in os.scandir(image_dir) if entry.name.lower().endswith(".jpg")}
    listed = _read_partition(partition)[split]
    # a fixed shuffle, so --n-train/--n-test take a random sample and only it is decoded
    order = torch.randperm(len(listed), generator=torch.Generator().manual_seed(0)).tolist()
    present = [listed[i] for i in order if listed[i] in on_disk]
    if not present:
        raise UserError(f"none of the {len(listed)} {split} images named in {partition} is in {image_dir}; "
                        f"check that the images were fully extracted")
    missing = len(listed) - len(present)
    cap = config["n_train"] if split == "train" else config["n_test"]
    chosen = present[:cap]
    key = {"dataset": "celeba", "split": split, "root": str(image_dir.resolve()), "crop": CELEBA_CROP,
           "cap": cap, "order_seed": 0, "source": _fingerprint(list(on_disk.values()) + [partition.stat()])}

    def build(progress: bool) -> tuple[torch.Tensor, int, list[str]]:
        if missing:
            print(f"warning: {missing} of the {len(listed)} {split} images named in {partition} are not in "
                  f"{image_dir}; skipping them", file=sys.stderr)
        images, kept = _decode_files([image_dir / name for name in chosen], CELEBA_CROP, progress, f"celeba {split}")
        return images, len(chosen) - len(kept) + missing, [chosen[i] for i in kept]

    return key, build, chosen


def _find_celeba(root: Path) -> tuple[Path | None, Path | None, Path | None]:
    """The image folder, partition file and attribute file of CelebA under `root` (torchvision or Kaggle layout)."""
    def first_file(*paths):
        return next((p for p in paths if p.is_file()), None)

    for base in (root / "celeba", root):
        folder = base / "img_align_celeba"
        if (folder / "img_align_celeba").is_dir():  # Kaggle's zip nests the folder in itself
            folder = folder / "img_align_celeba"
        if folder.is_dir():
            return (folder, first_file(base / "list_eval_partition.txt", base / "list_eval_partition.csv"),
                    first_file(base / "list_attr_celeba.txt", base / "list_attr_celeba.csv"))
    return None, None, None


def _download_celeba(root: Path) -> None:
    """Fetch CelebA with torchvision into root/celeba, or say how to place it by hand."""
    import torchvision  # only here: importing it is slow and most runs never download

    try:
        torchvision.datasets.CelebA(root=str(root), split="all", download=True)
    except Exception as e:  # offline, Google Drive quota, missing gdown, a bad zip: all end the same way
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"could not download CelebA into {root} ({reason}); download it by hand and place it as "
                        f"{CELEBA_LAYOUT.format(root=root)}") from None


def _read_partition(path: Path) -> dict[str, list[str]]:
    """File names per split from list_eval_partition.txt ('000001.jpg 0') or .csv ('000001.jpg,0')."""
    names = {split: [] for split in SPLITS}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or (number == 1 and fields[0] == "image_id"):  # blank line, or the csv header
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path} line {number} is {line.strip()!r}, expected 'NAME.jpg 0|1|2'; "
                            f"replace the file with CelebA's original")
        names[SPLITS[int(fields[1])]].append(fields[0])
    return {split: sorted(files) for split, files in names.items()}


def _read_attributes(path: Path) -> tuple[list[str], dict[str, int], np.ndarray]:
    """CelebA's attribute table from list_attr_celeba.txt (a count, a line of names, then 'NAME.jpg -1 1 ...')
    or Kaggle's .csv ('image_id,5_o_Clock_Shadow,...' then 'NAME.jpg,-1,1,...'): (attribute names,
    row of each file, int8 values [files, attributes], 1 where present)."""
    lines = path.read_text().splitlines()
    head = lines[0].replace(",", " ").split() if lines else []
    if head[:1] == ["image_id"]:
        names, first = head[1:], 1
    elif len(head) == 1 and head[0].isdigit() and len(lines) > 1:
        names, first = lines[1].split(), 2
    else:
        raise UserError(f"{path} starts with neither a count nor an 'image_id,...' header; "
                        f"replace it with CelebA's original")
    files, values, numbers = [], [], []
    for number in range(first, len(lines)):
        fields = lines[number].replace(",", " ").split()
        if fields:
            files.append(fields[0])
            values.append(fields[1:])
            numbers.append(number + 1)
    for row, fields in enumerate(values):
        if len(fields) != len(names):
            raise UserError(f"{path} line {numbers[row]} has {len(fields)} values for {len(names)} attributes; "
                            f"replace it with CelebA's original")
    try:  # numpy parses 8 million values in a second, where checking each in Python takes several
        table = np.array(values, dtype=np.int8).reshape(len(files), len(names))
        bad = np.flatnonzero(((table != 1) & (table != 0) & (table != -1)).any(axis=1))
    except ValueError:  # a value that is not a number: only now look for its line
        bad = [row for row, fields in enumerate(values) if not all(v in ("-1", "0", "1") for v in fields)]
    if len(bad):
        raise UserError(f"{path} line {numbers[bad[0]]} holds a value other than -1, 0 or 1; "
                        f"replace it with CelebA's original")
    return names, {name: row for row, name in enumerate(files)}, table


# ---------------------------------------------------------------- folder of images

def _folder_plan(config: dict, split: str) -> tuple[dict, Callable, list[str]]:
    """Cache key, builder and files (relative paths) of a split of a folder tree; 'valid' is the test split
    (there is no third part)."""
    root = Path(config["data_root"]).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder; check the path")
    files = _image_files(root)
    if not files:
        raise UserError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found under {root}; "
                        f"point --data-root at a folder of images")
    if len(files) < 2:
        raise UserError(f"{root} holds only one image; a train and a test split need at least two")
    n_test = min(len(files) - 1, max(1, round(len(files) * config["test_fraction"])))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(config["split_seed"])).tolist()
    part = order[n_test:] if split == "train" else order[:n_test]
    cap = config["n_train"] if split == "train" else config["n_test"]
    chosen = [files[i][0] for i in part][:cap]
    split = "train" if split == "train" else "test"  # so valid and test share one cache file
    key = {"dataset": "folder", "split": split, "root": str(root.resolve()), "crop": "square", "cap": cap,
           "test_fraction": config["test_fraction"], "split_seed": config["split_seed"],
           "source": _fingerprint([stat for _, stat in files])}

    relative = [path.relative_to(root).as_posix() for path in chosen]

    def build(progress: bool) -> tuple[torch.Tensor, int, list[str]]:
        images, kept = _decode_files(chosen, None, progress, f"{root} {split}")
        return images, len(chosen) - len(kept), [relative[i] for i in kept]

    return key, build, relative


def _image_files(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every image file under `root` (recursive, suffix in any case) with its stat, sorted by path."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                path = Path(folder) / name
                found.append((path, path.stat()))
    # relative paths, so the split does not depend on where the tree lives
    return sorted(found, key=lambda item: item[0].relative_to(root).as_posix())


# ---------------------------------------------------------------- decoding

def _fingerprint(stats: list[os.stat_result]) -> dict:
    """A summary of the source files that changes when files are added, removed or rewritten."""
    return {"files": len(stats), "bytes": sum(s.st_size for s in stats),
            "newest_mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def decode_image(path: str | os.PathLike, crop: int | None = None) -> np.ndarray | None:
    """Read an image as uint8 [64, 64, 3]: centre crop (side `crop`, or the short side), resize; None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            side = min(width, height) if crop is None else min(crop, width, height)
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale while the crop keeps >= SIZE pixels across
            image.draft("RGB", (math.ceil(width * SIZE / side), math.ceil(height * SIZE / side)))
            scale = image.size[0] / width
            if image.getexif().get(0x0112, 1) != 1:  # phone photos record their rotation in EXIF
                image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
            width, height = image.size
            side = min(side * scale, width, height)
            box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
            return np.array(image.resize((SIZE, SIZE), Image.BICUBIC, box=box, reducing_gap=3.0))
    except Exception:  # PIL raises many kinds for broken files; the caller counts them
        return None


def _decode_files(paths: list[Path], crop: int | None, progress: bool, what: str) -> tuple[torch.Tensor, list[int]]:
    """Decode `paths` into uint8 [N, 3, 64, 64], skipping files that cannot be read: (images, which paths they are)."""
    # one process: worker processes measured only 1.2x faster on 2 cores, and it happens once per cache
    images = torch.empty(len(paths), 3, SIZE, SIZE, dtype=torch.uint8)
    kept, bad = [], []
    for i, path in enumerate(tqdm(paths, desc=f"decoding {what}", unit="img", disable=not progress)):
        array = decode_image(path, crop)
        if array is None:
            bad.append(path)
            continue
        images[len(kept)] = torch.from_numpy(array).permute(2, 0, 1)
        kept.append(i)
    if not kept:
        raise UserError(f"none of the {len(paths)} image files of {what} could be decoded (e.g. {paths[0]}); "
                        f"check that they are valid images")
    if bad:
        print(f"warning: skipped {len(bad)} of {len(paths)} files of {what} that could not be decoded "
              f"(e.g. {bad[0]})", file=sys.stderr)
    # clone a shortened tensor: torch.save would otherwise store all of the storage behind the view
    return (images if not bad else images[:len(kept)].clone()), kept
