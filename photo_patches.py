"""Cut 64x64 patches from photographs that ship inside installed packages: `python photo_patches.py`.

A real-image check that runs offline: matplotlib's sample photograph (always installed with
matplotlib) and scikit-learn's two sample photographs (when scikit-learn is installed) are cut
into square crops of random size and position, randomly mirrored, and resized to 64x64 PNGs in
an image folder that every script reads with `--dataset folder --data-root DIR`.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from lib import cli
from lib.files import UserError, atomic_write, ensure_dir

# (package, path inside the package) of photographs that ship with packages this toolkit may have
PHOTOS = (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
          ("sklearn", "datasets/images/china.jpg"),
          ("sklearn", "datasets/images/flower.jpg"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/photos", help="image folder to write (must not hold PNGs already)")
    p.add_argument("--patches", type=cli.positive_int, default=4000, help="patches in all, shared equally among the photographs")
    p.add_argument("--size", type=cli.positive_int, default=64, help="side of a patch in pixels")
    p.add_argument("--min-crop", type=cli.positive_int, default=64, help="smallest side of a crop before resizing")
    p.add_argument("--max-crop-fraction", type=float, default=0.5, help="largest crop side, as a fraction of the photo's shorter side")
    p.add_argument("--seed", type=int, default=0, help="fixes every crop")
    return p.parse_args(argv)


def find_photos() -> list[Path]:
    """The photographs of PHOTOS whose package is installed."""
    found = []
    for package, relative in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            path = Path(spec.origin).parent / relative
            if path.is_file():
                found.append(path)
    return found


def cut_patches(photo: Image.Image, count: int, size: int, min_crop: int, max_fraction: float,
                rng: np.random.Generator) -> list[Image.Image]:
    """`count` square crops of random side in [min_crop, max_fraction * shorter side] at random
    positions, each mirrored with probability 1/2 and resized to size x size."""
    width, height = photo.size
    largest = max(min_crop, int(max_fraction * min(width, height)))
    patches = []
    for _ in range(count):
        side = int(rng.integers(min_crop, largest + 1))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        patch = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        patches.append(patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else patch)
    return patches


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    if not 0 < args.max_crop_fraction <= 1:
        raise UserError(f"--max-crop-fraction must be in (0, 1], got {args.max_crop_fraction}")
    photos = find_photos()
    if not photos:
        raise UserError("no sample photograph found: install matplotlib (and scikit-learn for two more photographs)")
    out = Path(args.out)
    if out.is_dir() and any(out.glob("*.png")):
        raise UserError(f"{out} already holds PNG files; choose another --out or delete it first")
    ensure_dir(out)
    rng = np.random.default_rng(args.seed)
    written = []
    for k, path in enumerate(photos):
        with Image.open(path) as image:
            photo = image.convert("RGB")
        if min(photo.size) < args.min_crop:
            raise UserError(f"{path} is smaller than --min-crop {args.min_crop}; lower --min-crop")
        count = args.patches // len(photos) + (k < args.patches % len(photos))
        for i, patch in enumerate(cut_patches(photo, count, args.size, args.min_crop, args.max_crop_fraction, rng)):
            target = out / f"{path.stem}_{i:05d}.png"
            written.append(atomic_write(target, lambda f, patch=patch: patch.save(f, format="png")))
        print(f"{path.name}: {count} patches")
    print(f"wrote {len(written)} patches of {args.size}x{args.size} from {len(photos)} photographs to {out}")
    return written


if __name__ == "__main__":
    cli.run(main)
