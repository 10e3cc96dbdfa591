"""Image files on disk for data.py: CelebA (its official partition and 40 attributes, found in either of its usual
layouts, downloaded on request) and any folder tree of images (split into train/test by a seed), decoded, centre-
cropped and resized to 64x64. Imported only for --dataset celeba and folder: the synthetic faces need none of it."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

import data
from data import SIZE, SPLITS
from lib.files import UserError

CELEBA_CROP = 148  # the usual centre crop of CelebA's 178x218 aligned faces before resizing
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CELEBA_LAYOUT = ("{root}/celeba/img_align_celeba/*.jpg with {root}/celeba/list_eval_partition.txt, "
                 "or Kaggle's {root}/img_align_celeba/img_align_celeba/*.jpg with {root}/list_eval_partition.csv")


def celeba_attributes(config: dict, files: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, dict]] | None:
    """CelebA's 40 binary attributes (0 absent, 1 present) of the cached `files`, row for row, from
    list_attr_celeba.txt or .csv; None when --download fetched the images but not the attributes."""
    attributes = _find_celeba(Path(config["data_root"]).expanduser())[2]
    if attributes is None:
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


def celeba_attributes_missing(config: dict) -> str | None:
    """Why a CelebA folder gives no attributes (its images and partition are there, its attribute list is not)."""
    root = Path(config["data_root"]).expanduser()
    image_dir, partition, attributes = _find_celeba(root)
    if image_dir is not None and partition is not None and attributes is None:
        return f"CelebA under {root} has no list_attr_celeba.txt or .csv beside {partition.name}"
    return None


# ---------------------------------------------------------------- CelebA

def celeba_plan(config: dict, split: str) -> tuple[dict, Callable, list[str]]:
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

def folder_plan(config: dict, split: str) -> tuple[dict, Callable, list[str]]:
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


def validation_images(config: dict, count: int) -> tuple[torch.Tensor, str]:
    """The first `count` images of the validation split, for choices that must never see the test
    split, and where they came from: a folder tree has no validation part ('valid' is its test
    split), so its last `count` training images are carved off instead."""
    if data._validated(config)["dataset"] == "folder":
        train = data.load_split(config, "train")
        return train[-count:], f"the last {min(count, len(train))} training images (a folder tree has no validation split)"
    valid = data.load_split(config, "valid")[:count]
    return valid, f"the first {len(valid)} images of the validation split"
