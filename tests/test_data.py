"""Tests of data.py on tiny generated data: fake CelebA trees, image folders and synthetic splits."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

import data
from lib import probe
from lib import images as image_files
from lib.files import UserError, load_checkpoint, save_checkpoint

CELEBA_PARTS = [0] * 18 + [1] * 6 + [2] * 6  # partition value of each fake CelebA image


def config_for(tmp_path, *flags, inherit=False, base=None):
    """A data config from command-line flags, with its cache inside tmp_path."""
    parser = argparse.ArgumentParser()
    data.add_data_args(parser, inherit=inherit)
    args = parser.parse_args([*flags, "--cache-dir", str(tmp_path / "cache")])
    return data.data_config(args, base)


def framed_image(path, size, inner, inner_colour, outer_colour):
    """Save an image of `size` whose centred `inner` square is one colour and the frame another."""
    width, height = size
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = outer_colour
    top, left = (height - inner) // 2, (width - inner) // 2
    pixels[top:top + inner, left:left + inner] = inner_colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def random_colour(rng):
    return [int(c) for c in rng.integers(0, 256, 3)]


def fake_celeba(root, layout, parts=CELEBA_PARTS):
    """A tiny CelebA: 178x218 JPEGs whose 148x148 centre has its own colour, in either layout; `parts`
    gives each image's partition (0 train, 1 valid, 2 test)."""
    rng = np.random.default_rng(0)
    if layout == "txt":
        images, partition = root / "celeba" / "img_align_celeba", root / "celeba" / "list_eval_partition.txt"
        lines = [f"{i + 1:06d}.jpg {part}" for i, part in enumerate(parts)]
    else:
        images, partition = root / "img_align_celeba" / "img_align_celeba", root / "list_eval_partition.csv"
        lines = ["image_id,partition"] + [f"{i + 1:06d}.jpg,{part}" for i, part in enumerate(parts)]
    centres = {}
    for i in range(len(parts)):
        name = f"{i + 1:06d}.jpg"
        centres[name] = random_colour(rng)
        framed_image(images / name, (178, 218), 148, centres[name], [255, 0, 255])
    partition.write_text("\n".join(lines) + "\n")
    return images, partition, centres


def cache_payloads(tmp_path, pattern="*.pt"):
    return [load_checkpoint(p, data.CACHE_KIND) for p in sorted((tmp_path / "cache").glob(pattern))]


# ---------------------------------------------------------------- CelebA

@pytest.mark.parametrize("layout", ["txt", "csv"])
def test_celeba_layouts_load_official_splits(tmp_path, layout):
    _, _, centres = fake_celeba(tmp_path / "root", layout)
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    colours = torch.tensor(list(centres.values()), dtype=torch.float32)
    for value, split in enumerate(data.SPLITS):
        images = data.load_split(config, split, progress=False)
        assert images.shape == (CELEBA_PARTS.count(value), 3, 64, 64)
        assert images.dtype == torch.uint8 and images.is_contiguous()
        # the centre crop removes the magenta frame: every inner pixel is some image's centre colour
        inner = images[:, :, 4:-4, 4:-4].float()
        mean = inner.mean(dim=(2, 3))
        assert torch.cdist(mean, colours).min(dim=1).values.max() < 8
        assert (inner - mean[:, :, None, None]).abs().max() < 20


def test_batches_float_in_unit_range_and_order(tmp_path):
    images = torch.randint(0, 256, (10, 3, 64, 64), dtype=torch.uint8)
    images[0] = 0
    images[1] = 255
    plain = list(data.batches(images, 4))
    assert [len(b) for b in plain] == [4, 4, 2]
    assert all(b.dtype == torch.float32 and b.min() >= 0 and b.max() <= 1 for b in plain)
    assert torch.equal(torch.cat(plain), images.float() / 255)
    assert [len(b) for b in data.batches(images, 4, drop_last=True)] == [4, 4]
    shuffled = torch.cat(list(data.batches(images, 3, shuffle=True, generator=torch.Generator().manual_seed(5))))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(shuffled, images[order].float() / 255)
    last = next(data.batches(images, 2, memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)


def test_celeba_batches_from_loaded_split(tmp_path):
    fake_celeba(tmp_path / "root", "txt")
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    batch = next(data.batches(data.load_split(config, "valid", progress=False), 4))
    assert batch.shape == (4, 3, 64, 64) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1 and batch.max() > 0.1


def test_celeba_without_partition_file_names_it(tmp_path):
    _, partition, _ = fake_celeba(tmp_path / "root", "txt")
    partition.unlink()
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    with pytest.raises(UserError, match="list_eval_partition"):
        data.load_split(config, "train", progress=False)
    empty = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path))
    with pytest.raises(UserError, match="img_align_celeba"):
        data.load_split(empty, "train", progress=False)


def test_celeba_missing_images_are_skipped_then_an_error(tmp_path, capsys):
    images, _, _ = fake_celeba(tmp_path / "root", "txt")
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    for name in ("000019.jpg", "000020.jpg"):  # two of the six validation images
        (images / name).unlink()
    assert len(data.load_split(config, "valid", progress=False)) == 4
    assert "2 of the 6 valid images" in capsys.readouterr().err
    assert [p["skipped"] for p in cache_payloads(tmp_path, "celeba-valid-*")] == [2]
    for name in ("000021.jpg", "000022.jpg", "000023.jpg", "000024.jpg"):
        (images / name).unlink()
    with pytest.raises(UserError, match="none of the 6 valid images"):
        data.load_split(config, "valid", progress=False)


def test_celeba_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    import torchvision

    def offline(**kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CelebA", offline)
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "new"), "--download")
    with pytest.raises(UserError, match="could not download.*network unreachable.*list_eval_partition.txt"):
        data.load_split(config, "train", progress=False)


def test_decode_image_crops_the_centre_square(tmp_path):
    framed_image(tmp_path / "wide.png", (120, 80), 80, [0, 200, 0], [200, 0, 0])
    framed_image(tmp_path / "small.jpg", (100, 130), 100, [0, 0, 200], [200, 200, 0])
    wide = image_files.decode_image(tmp_path / "wide.png")
    assert wide.shape == (64, 64, 3) and wide.dtype == np.uint8
    assert np.abs(wide[2:-2, 2:-2].astype(int) - [0, 200, 0]).max() < 3
    # a crop larger than the image shrinks to its short side
    small = image_files.decode_image(tmp_path / "small.jpg", crop=148)
    assert np.abs(small[4:-4, 4:-4].astype(int) - [0, 0, 200]).max() < 20
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    assert image_files.decode_image(tmp_path / "bad.jpg") is None


# ---------------------------------------------------------------- synthetic

def test_synthetic_splits_sizes_caps_and_disjoint(tmp_path):
    config = config_for(tmp_path, "--synthetic-size", "50")
    train, valid, test = (data.load_split(config, split, progress=False) for split in data.SPLITS)
    assert (len(train), len(valid), len(test)) == (50, 10, 10)
    seen = {face.numpy().tobytes() for face in train}
    assert not any(face.numpy().tobytes() in seen for face in torch.cat([valid, test]))
    assert not torch.equal(valid, test)
    capped = config_for(tmp_path, "--synthetic-size", "50", "--n-train", "7", "--n-test", "3")
    assert torch.equal(data.load_split(capped, "train", progress=False), train[:7])
    assert torch.equal(data.load_split(capped, "test", progress=False), test[:3])


# ---------------------------------------------------------------- folder

def image_tree(root, corrupt=1):
    """19 PNGs and JPEGs of assorted sizes in nested folders, `corrupt` broken files and a text file."""
    rng = np.random.default_rng(1)
    for i in range(19):
        suffix = [".png", ".jpg", ".JPEG", ".PNG"][i % 4]
        size = [(90, 70), (64, 64), (40, 100), (300, 200)][i % 4]
        folder = root / f"group{i % 3}" / "deeper" if i % 2 else root / f"group{i % 3}"
        framed_image(folder / f"img{i:02d}{suffix}", size, min(size), random_colour(rng), random_colour(rng))
    for i in range(corrupt):
        (root / f"broken{i}.jpg").write_bytes(b"\xff\xd8 truncated garbage")
    (root / "notes.txt").write_text("not an image")


def test_folder_split_skips_corrupt_files_and_is_deterministic(tmp_path, capsys):
    image_tree(tmp_path / "tree")
    flags = ("--dataset", "folder", "--data-root", str(tmp_path / "tree"), "--test-fraction", "0.25")
    config = config_for(tmp_path, *flags)
    train = data.load_split(config, "train", progress=False)
    test = data.load_split(config, "test", progress=False)
    assert "skipped 1 of" in capsys.readouterr().err
    # 20 image files: round(20 * 0.25) = 5 held out; the broken one is skipped in whichever split has it
    payloads = {p["key"]["split"]: p for p in cache_payloads(tmp_path)}
    assert payloads["train"]["skipped"] + payloads["test"]["skipped"] == 1
    assert len(train) + payloads["train"]["skipped"] == 15 and len(test) + payloads["test"]["skipped"] == 5
    again = config_for(tmp_path / "elsewhere", *flags)  # a fresh cache: splits are made anew
    assert torch.equal(data.load_split(again, "valid", progress=False), test)  # no valid part: the test split
    assert torch.equal(data.load_split(again, "train", progress=False), train)
    reseeded = config_for(tmp_path / "elsewhere", *flags, "--split-seed", "1")
    assert not torch.equal(data.load_split(reseeded, "test", progress=False), test)


def test_validation_images_come_from_the_validation_split_or_are_carved_from_training(tmp_path):
    image_tree(tmp_path / "tree", corrupt=0)
    config = config_for(tmp_path, "--dataset", "folder", "--data-root", str(tmp_path / "tree"), "--test-fraction", "0.25")
    valid, source = image_files.validation_images(config, 4)
    assert torch.equal(valid, data.load_split(config, "train", progress=False)[-4:]) and "training" in source
    assert not any(torch.equal(v, t) for v in valid for t in data.load_split(config, "test", progress=False))
    synthetic = config_for(tmp_path, "--synthetic-size", "40")
    valid, source = image_files.validation_images(synthetic, 5)
    assert torch.equal(valid, data.load_split(synthetic, "valid", progress=False)[:5]) and "validation split" in source


def test_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    config = config_for(tmp_path, "--dataset", "folder", "--data-root", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no images"):
        data.load_split(config, "train", progress=False)
    image_tree(tmp_path / "broken", corrupt=0)
    for path in (tmp_path / "broken").rglob("img*"):
        path.write_bytes(b"garbage")
    config = config_for(tmp_path, "--dataset", "folder", "--data-root", str(tmp_path / "broken"))
    with pytest.raises(UserError, match="could be decoded"):
        data.load_split(config, "train", progress=False)


# ---------------------------------------------------------------- cache

def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    fake_celeba(tmp_path / "root", "csv")
    celeba = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    synthetic = config_for(tmp_path, "--synthetic-size", "20")
    first = [data.load_split(celeba, "train", progress=False), data.load_split(synthetic, "train", progress=False)]
    assert len(list((tmp_path / "cache").glob("celeba-train-*.pt"))) == 1
    assert len(list((tmp_path / "cache").glob("synthetic-train-*.pt"))) == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("decoded although the cache was valid")

    monkeypatch.setattr(image_files, "decode_image", forbidden)
    monkeypatch.setattr(data, "synthetic_faces", forbidden)
    assert torch.equal(data.load_split(celeba, "train", progress=False), first[0])
    assert torch.equal(data.load_split(synthetic, "train", progress=False), first[1])


def test_corrupt_or_foreign_cache_is_rebuilt(tmp_path, capsys):
    config = config_for(tmp_path, "--synthetic-size", "12")
    original = data.load_split(config, "train", progress=False)
    (path,) = (tmp_path / "cache").glob("synthetic-train-*.pt")
    path.write_bytes(b"\x00garbage, not a checkpoint")
    assert torch.equal(data.load_split(config, "train", progress=False), original)
    assert "rebuilding" in capsys.readouterr().err
    assert torch.equal(load_checkpoint(path, data.CACHE_KIND)["images"], original)
    key = load_checkpoint(path, data.CACHE_KIND)["key"]
    for images, stored_key in [(original, {**key, "count": 99}),  # made with other settings
                               (original.float(), key),  # wrong dtype
                               (original[:, :, :32], key)]:  # wrong shape
        save_checkpoint(path, data.CACHE_KIND, {"images": images, "key": stored_key, "skipped": 0})
        assert torch.equal(data.load_split(config, "train", progress=False), original)
        assert "rebuilding" in capsys.readouterr().err


def test_changed_source_makes_the_cache_stale(tmp_path):
    image_tree(tmp_path / "tree", corrupt=0)
    config = config_for(tmp_path, "--dataset", "folder", "--data-root", str(tmp_path / "tree"))
    before = data.load_split(config, "train", progress=False)
    for path in sorted((tmp_path / "tree").rglob("*.png")):
        framed_image(path, (64, 64), 64, [1, 2, 3], [1, 2, 3])  # same names, new pixels
    after = data.load_split(config, "train", progress=False)
    assert after.shape == before.shape and not torch.equal(after, before)


def test_caps_take_the_first_n(tmp_path):
    fake_celeba(tmp_path / "root", "txt")
    image_tree(tmp_path / "tree", corrupt=0)
    for flags in (["--dataset", "celeba", "--data-root", str(tmp_path / "root")],
                  ["--dataset", "folder", "--data-root", str(tmp_path / "tree")]):
        full = [data.load_split(config_for(tmp_path, *flags), s, progress=False) for s in ("train", "test")]
        capped = config_for(tmp_path, *flags, "--n-train", "5", "--n-test", "2")
        assert torch.equal(data.load_split(capped, "train", progress=False), full[0][:5])
        assert torch.equal(data.load_split(capped, "test", progress=False), full[1][:2])


# ---------------------------------------------------------------- labels

CELEBA_ATTRIBUTES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                     "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                     "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                     "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                     "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
                     "Young").split()


def attribute_pattern(number):
    """The 40 values (-1 or 1) of fake CelebA image `number`: its first five spell the number in binary."""
    return [1 if number >> j & 1 else -1 for j in range(5)] + [1 if number * j % 7 < 3 else -1 for j in range(5, 40)]


def write_attributes(root, layout, count=len(CELEBA_PARTS)):
    """CelebA's list_attr_celeba in the original txt layout or Kaggle's csv, rows in reverse order."""
    numbers = range(count, 0, -1)  # not the partition's order: rows must be found by name
    if layout == "txt":
        path = root / "celeba" / "list_attr_celeba.txt"
        lines = [str(count), " ".join(CELEBA_ATTRIBUTES) + " "]
        lines += [f"{n:06d}.jpg " + " ".join(f"{v:2d}" for v in attribute_pattern(n)) for n in numbers]
    else:
        path = root / "list_attr_celeba.csv"
        lines = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        lines += [f"{n:06d}.jpg," + ",".join(str(v) for v in attribute_pattern(n)) for n in numbers]
    path.write_text("\n".join(lines) + "\n")
    return path


def image_numbers(images, centres):
    """Which fake CelebA image each row is, told by its centre colour."""
    colours = torch.tensor(list(centres.values()), dtype=torch.float32)
    distances, nearest = torch.cdist(images[:, :, 8:-8, 8:-8].float().mean(dim=(2, 3)), colours).sort(dim=1)
    assert (distances[:, 1] - distances[:, 0] > 10).all()  # no colour is ambiguous
    return [int(list(centres)[i][:6]) for i in nearest[:, 0]]


def assert_labels_are_the_images(labels, images, centres):
    """Row i of the labels is the attribute row of the image in row i of the split."""
    values, about = labels
    assert list(values) == list(about) == CELEBA_ATTRIBUTES
    assert all(a["kind"] == "class" and a["classes"] == 2 and a["what"] for a in about.values())
    expected = torch.tensor([attribute_pattern(n) for n in image_numbers(images, centres)]).add(1).div(2)
    got = torch.stack([values[name] for name in CELEBA_ATTRIBUTES], dim=1)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@pytest.mark.parametrize("layout", ["txt", "csv"])
def test_celeba_labels_align_with_the_split_rows(tmp_path, layout):
    _, _, centres = fake_celeba(tmp_path / "root", layout)
    write_attributes(tmp_path / "root", layout)
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    assert probe.labels_unavailable(config) is None
    for split in data.SPLITS:  # labels first, then images from the cache they made, and the other way round
        labels = probe.load_labels(config, split, progress=False)
        assert_labels_are_the_images(labels, data.load_split(config, split, progress=False), centres)
    assert_labels_are_the_images(probe.load_labels(config, "train", progress=False),
                                 data.load_split(config, "train", progress=False), centres)


def test_celeba_labels_follow_caps_missing_and_undecodable_files(tmp_path, capsys):
    images_dir, _, centres = fake_celeba(tmp_path / "root", "txt")
    write_attributes(tmp_path / "root", "txt")
    flags = ("--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    order = image_numbers(data.load_split(config_for(tmp_path / "full", *flags), "train", progress=False), centres)
    broken, gone = order[1], order[3]  # among the first five of the fixed shuffle
    (images_dir / f"{broken:06d}.jpg").write_bytes(b"not a jpeg")
    (images_dir / f"{gone:06d}.jpg").unlink()
    config = config_for(tmp_path / "capped", *flags, "--n-train", "5")
    images = data.load_split(config, "train", progress=False)
    kept = [n for n in order if n != gone][:5]
    kept.remove(broken)
    assert image_numbers(images, centres) == kept  # the cap counts files on disk; the broken one is skipped
    assert_labels_are_the_images(probe.load_labels(config, "train", progress=False), images, centres)
    (payload,) = cache_payloads(tmp_path / "capped", "celeba-train-*")
    assert payload["files"] == [f"{n:06d}.jpg" for n in kept] and payload["skipped"] == 2
    assert "could not be decoded" in capsys.readouterr().err


def test_celeba_labels_from_a_cache_that_does_not_record_its_files(tmp_path, monkeypatch, capsys):
    images_dir, _, centres = fake_celeba(tmp_path / "root", "csv")
    write_attributes(tmp_path / "root", "csv")
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))

    def forget_files():  # as caches were written before they recorded their files
        (path,) = (tmp_path / "cache").glob("celeba-valid-*.pt")
        payload = load_checkpoint(path, data.CACHE_KIND)
        del payload["files"]
        save_checkpoint(path, data.CACHE_KIND, payload)

    images = data.load_split(config, "valid", progress=False)
    forget_files()

    def forbidden(*args, **kwargs):
        raise AssertionError("decoded although the cache could tell its files")

    with monkeypatch.context() as patch:  # every file was decoded: its rows are the planned files
        patch.setattr(image_files, "decode_image", forbidden)
        assert_labels_are_the_images(probe.load_labels(config, "valid", progress=False), images, centres)
    (images_dir / "000020.jpg").write_bytes(b"not a jpeg")  # a new cache, one file short of the plan
    for path in (tmp_path / "cache").glob("*.pt"):
        path.unlink()
    images = data.load_split(config, "valid", progress=False)
    forget_files()
    capsys.readouterr()
    labels = probe.load_labels(config, "valid", progress=False)  # which file is missing cannot be told: rebuilt
    assert "does not record which files" in capsys.readouterr().err
    assert len(images) == 5 and torch.equal(data.load_split(config, "valid", progress=False), images)
    assert_labels_are_the_images(labels, images, centres)


def test_labels_absent_for_celeba_without_attributes_and_for_folders(tmp_path):
    fake_celeba(tmp_path / "root", "txt")
    celeba = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    assert probe.load_labels(celeba, "train", progress=False) is None
    assert "list_attr_celeba" in probe.labels_unavailable(celeba)
    image_tree(tmp_path / "tree", corrupt=0)
    folder = config_for(tmp_path, "--dataset", "folder", "--data-root", str(tmp_path / "tree"))
    assert probe.load_labels(folder, "train", progress=False) is None
    assert "no attribute labels" in probe.labels_unavailable(folder)


def test_celeba_attribute_file_that_is_wrong_is_an_error(tmp_path):
    fake_celeba(tmp_path / "root", "txt")
    path = write_attributes(tmp_path / "root", "txt", count=len(CELEBA_PARTS) - 1)  # no row for image 30
    config = config_for(tmp_path, "--dataset", "celeba", "--data-root", str(tmp_path / "root"))
    with pytest.raises(UserError, match="no row for 000030.jpg"):
        probe.load_labels(config, "test", progress=False)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + [lines[5].replace("-1", "2", 1)] + lines[6:]))
    with pytest.raises(UserError, match="line 6 holds a value other than"):
        probe.load_labels(config, "test", progress=False)
    path.write_text("\n".join(lines[:5] + [lines[5].rsplit(" ", 1)[0]] + lines[6:]))
    with pytest.raises(UserError, match="line 6 has 39 values for 40 attributes"):
        probe.load_labels(config, "test", progress=False)


def test_synthetic_labels_are_the_faces_attributes_of_the_split(tmp_path):
    config = config_for(tmp_path, "--synthetic-size", "50")
    capped = config_for(tmp_path, "--synthetic-size", "50", "--n-train", "7", "--n-test", "3")
    assert probe.labels_unavailable(config) is None
    for split, count in (("train", 50), ("valid", 10), ("test", 10)):
        values, about = probe.load_labels(config, split, progress=False)
        assert about == probe.ATTRIBUTES
        expected, _ = probe.face_attributes(data.SYNTHETIC_START[split], count, data.SYNTHETIC_SEED)
        assert all(torch.equal(values[name], expected[name]) for name in expected)
        assert all(len(v) == len(data.load_split(config, split, progress=False)) for v in values.values())
        capped_values, _ = probe.load_labels(capped, split, progress=False)
        cap = 7 if split == "train" else 3
        assert all(torch.equal(capped_values[name], values[name][:cap]) for name in values)
    with pytest.raises(UserError, match="unknown split"):
        probe.load_labels(config, "validation")


# ---------------------------------------------------------------- config

def test_data_config_inherits_from_base(tmp_path):
    base = {"dataset": "folder", "data_root": "/some/faces", "n_train": 100, "test_fraction": 0.2,
            "split_seed": 7, "synthetic_size": 500}
    config = config_for(tmp_path, inherit=True, base=base)
    for key, value in base.items():
        assert config[key] == value
    assert config["n_test"] is None and config["download"] is False  # absent from base: the defaults
    assert config["cache_dir"] == str(tmp_path / "cache")  # given on the command line
    override = config_for(tmp_path, "--n-train", "5", "--dataset", "celeba", inherit=True, base=base)
    assert override["n_train"] == 5 and override["dataset"] == "celeba" and override["split_seed"] == 7
    assert json.loads(json.dumps(config)) == config  # plain data, fit for a checkpoint
    plain = config_for(tmp_path)
    assert plain["dataset"] == "synthetic" and plain["synthetic_size"] == 10000 and plain["n_train"] is None


def test_inherit_help_and_defaults():
    parser = argparse.ArgumentParser()
    data.add_data_args(parser, inherit=True)
    assert all(value is None for value in vars(parser.parse_args([])).values())
    assert "as the endpoints" in parser.format_help()


@pytest.mark.parametrize("flags, base, message", [
    ([], {"dataset": "imagenet"}, "unknown dataset"),
    (["--dataset", "celeba"], None, "needs --data-root"),
    (["--dataset", "folder"], None, "needs --data-root"),
    (["--test-fraction", "1.0"], None, "--test-fraction"),
    (["--test-fraction", "0"], None, "--test-fraction"),
    ([], {"n_train": 0}, "--n-train"),
    ([], {"synthetic_size": 2.5}, "--synthetic-size"),
])
def test_data_config_rejects_bad_settings(tmp_path, flags, base, message):
    with pytest.raises(UserError, match=message):
        config_for(tmp_path, *flags, inherit=True, base=base)


def test_unknown_split_is_an_error(tmp_path):
    with pytest.raises(UserError, match="unknown split"):
        data.load_split(config_for(tmp_path, "--synthetic-size", "5"), "validation", progress=False)


# ---------------------------------------------------------------- photo_patches.py: real photographs, offline

def test_photo_patches_are_real_crops_deterministic_and_load_as_a_folder(tmp_path, monkeypatch):
    import photo_patches

    photo = tmp_path / "photo.png"  # a stand-in photograph: a horizontal ramp, so every crop's content depends on its place
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (200, 1, 3))
    Image.fromarray(ramp).save(photo)
    monkeypatch.setattr(photo_patches, "find_photos", lambda: [photo])
    first = photo_patches.main(["--out", str(tmp_path / "a"), "--patches", "12", "--seed", "3"])
    again = photo_patches.main(["--out", str(tmp_path / "b"), "--patches", "12", "--seed", "3"])
    other = photo_patches.main(["--out", str(tmp_path / "c"), "--patches", "12", "--seed", "4"])
    assert len(first) == 12 and [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]
    means = set()
    for path in first:
        with Image.open(path) as png:
            assert png.size == (64, 64) and png.mode == "RGB"
            means.add(round(float(np.asarray(png).mean())))
    assert len(means) > 6  # crops from different places of the ramp differ
    with pytest.raises(UserError, match="already holds PNG files"):
        photo_patches.main(["--out", str(tmp_path / "a"), "--patches", "12"])
    config = data.data_config(argparse.Namespace(**{**data.DEFAULTS, "dataset": "folder", "data_root": str(tmp_path / "a"),
                                                    "test_fraction": 0.25, "cache_dir": str(tmp_path / "cache")}))
    assert len(data.load_split(config, "train")) == 9 and len(data.load_split(config, "test")) == 3


def test_the_shipped_photographs_are_found():
    import photo_patches

    found = photo_patches.find_photos()
    assert found and found[0].name == "grace_hopper.jpg"  # matplotlib is a requirement, so its photograph is always there
    with Image.open(found[0]) as photo:
        assert min(photo.size) >= 256
