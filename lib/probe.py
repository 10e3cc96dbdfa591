"""Linear probes of an autoencoder's code: what a linear model reads off the code z of an image
about its attributes (ridge regression in closed form, fitted on training codes, scored on test
codes), and linear CKA between two sets of codes of the same images; the attributes probed (the synthetic
faces' drawn attributes, CelebA's 40); and the probes along the paths of `eval_curve.py --probe` (imported only
with that flag).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

import torch
from tqdm import tqdm

import curves
import data
from lib import cli, training
from lib.files import UserError

RIDGE = 1e-2  # ridge penalty on standardised codes, as a fraction of the number of training images


def ridge_fit(z: torch.Tensor, y: torch.Tensor, penalty: float = RIDGE) -> dict:
    """Ridge regression of targets y [N, K] on codes z [N, D], in float64: codes standardised with
    the training mean and std, an unpenalised bias, penalty * N on the weights."""
    z, y = z.double(), y.double()
    mean, std = z.mean(0), z.std(0).clamp_min(1e-8)
    x = (z - mean) / std
    y_mean = y.mean(0)
    gram = x.T @ x + penalty * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, x.T @ (y - y_mean))
    return {"mean": mean, "std": std, "weights": weights, "bias": y_mean}


def ridge_predict(fit: dict, z: torch.Tensor) -> torch.Tensor:
    return ((z.double() - fit["mean"]) / fit["std"]) @ fit["weights"] + fit["bias"]


def probe(train_z: torch.Tensor, train_labels: dict, test_z: torch.Tensor, test_labels: dict, about: dict,
          penalty: float = RIDGE) -> dict:
    """Fit one linear probe per attribute on (train_z, train_labels) and score it on the test codes:
    accuracy for class attributes (one-hot ridge, argmax), R^2 for continuous ones; each with its
    standard error over test images and its chance level (the majority class of the training
    labels; R^2 = 0 for predicting the training mean). Also the means over each kind, with
    standard errors over images of the per-image mean (fraction correct; 1 - mean of squared
    errors over variances)."""
    n = len(test_z)
    per_attribute, correct, residual = {}, [], []
    for name, info in about.items():
        y_train, y_test = train_labels[name].double(), test_labels[name].double()
        if info["kind"] == "class":
            k = int(info["classes"])
            fit = ridge_fit(train_z, torch.nn.functional.one_hot(y_train.long(), k).double(), penalty)
            hit = (ridge_predict(fit, test_z).argmax(1) == y_test.long()).double()
            majority = torch.bincount(y_train.long(), minlength=k).argmax()
            chance = (y_test.long() == majority).double().mean().item()
            score = hit.mean().item()
            per_attribute[name] = {"kind": "class", "accuracy": score, "se": math.sqrt(max(score * (1 - score), 0.0) / n),
                                   "chance": chance}
            correct.append(hit)
        else:
            fit = ridge_fit(train_z, y_train[:, None], penalty)
            err = (ridge_predict(fit, test_z)[:, 0] - y_test) ** 2
            var = y_test.var(unbiased=False).clamp_min(1e-12)
            share = err / var  # per image; 1 - its mean is R^2
            per_attribute[name] = {"kind": "continuous", "r2": 1 - share.mean().item(), "se": share.std().item() / math.sqrt(n),
                                   "chance": 0.0}
            residual.append(share)
    out = {"attributes": per_attribute, "accuracy": None, "accuracy_se": None, "chance_accuracy": None, "r2": None, "r2_se": None}
    if correct:
        q = torch.stack(correct).mean(0)
        out.update(accuracy=q.mean().item(), accuracy_se=q.std().item() / math.sqrt(n),
                   chance_accuracy=sum(a["chance"] for a in per_attribute.values() if a["kind"] == "class") / len(correct))
    if residual:
        q = 1 - torch.stack(residual).mean(0)
        out.update(r2=q.mean().item(), r2_se=q.std().item() / math.sqrt(n))
    return out


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear centred kernel alignment of two sets of features of the same images ([N, D1], [N, D2]):
    1 for features equal up to rotation and scale, near 0 for unrelated ones (Kornblith et al. 2019)."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    cross = torch.linalg.matrix_norm(a.T @ b) ** 2
    return (cross / (torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b))).item()


# ---------------------------------------------------------------- the attributes probed

_HAIR_NAMES = ("black", "dark brown", "brown", "blond", "red", "grey", "off-black", "chestnut")  # data._HAIR's entries
_IRIS_NAMES = ("brown", "dark brown", "blue", "green", "grey", "hazel")  # data._IRIS's entries


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


def face_attributes(start: int, count: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Attributes of faces start .. start+count-1 without drawing them: (name -> float32 [count], ATTRIBUTES).

    They come from the very numbers the drawing uses, so face i's attributes depend only on (seed, i)."""
    p = data._face_params(seed, np.arange(start, start + count, dtype=np.uint64))
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


def load_labels(config: dict, split: str, progress: bool = True,
                ) -> tuple[dict[str, torch.Tensor], dict[str, dict]] | None:
    """Attributes of a split's images, row for row with data.load_split: (name -> float32 [N], name ->
    {"kind": "class" or "continuous", "classes": k or None, "what": text}), or None (see labels_unavailable).

    Synthetic faces: ATTRIBUTES. CelebA: its 40 binary attributes (0 absent, 1 present), read
    from list_attr_celeba.txt or .csv for the files the split's cache holds.
    """
    config = data._validated(config)
    if split not in data.SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(data.SPLITS)}")
    if labels_unavailable(config):
        return None
    if config["dataset"] == "synthetic":
        start, count = data._synthetic_range(config, split)
        return face_attributes(start, count, data.SYNTHETIC_SEED)
    _, files = data._load(config, split, progress, need_files=True)
    return cli.optional("images", "--dataset celeba").celeba_attributes(config, files)


def labels_unavailable(config: dict) -> str | None:
    """Why `load_labels` gives None for this config, in a few words (for a note); None when it gives labels."""
    config = data._validated(config)
    if config["dataset"] == "folder":
        return "a --dataset folder tree has no attribute labels"
    if config["dataset"] == "celeba":
        return cli.optional("images", "--dataset celeba").celeba_attributes_missing(config)
    return None


# ---------------------------------------------------------------- eval_curve.py --probe

@torch.inference_mode()
def codes_at(net: curves.CurveNet, t: float, images: dict[str, torch.Tensor], bn_images: torch.Tensor, batch_size: int,
             device: torch.device, noise: float = 0.0) -> dict[str, torch.Tensor]:
    """The codes z (the bottleneck) of each set of `images` by the network at t, after one
    recomputation of the BatchNorm statistics at t (training.recompute_bn, with the group's `noise`)."""
    training.recompute_bn(net, bn_images, noise, batch_size=batch_size, device=device, t=t)
    net.eval()
    net.set_t(t)
    return {name: torch.cat([net.net.encode(x).float().cpu()
                             for x in data.batches(x_set, batch_size, device=device, memory_format=torch.channels_last)])
            for name, x_set in images.items()}


def probe_paths(paths: dict, ts: list[float], images: dict, labels: dict, about: dict, *, bn_images: torch.Tensor,
                batch_size: int, device: torch.device, noise: float = 0.0) -> dict:
    """At every t of every path: linear probes of the code fitted on the training images' codes and
    scored on the test images' (probe), and the linear CKA of the test codes with those at t = 0 and 1."""
    out, chance = {}, None
    for name, net in paths.items():
        net = net.to(device, memory_format=torch.channels_last)
        rows = {key: [] for key in ("accuracy", "accuracy_se", "r2", "r2_se", "attributes")}
        test_codes = {}
        for t in tqdm(ts, desc=f"probes on the {name}", leave=False, disable=None, dynamic_ncols=True):
            z = codes_at(net, t, images, bn_images, batch_size, device, noise)
            scores = probe(z["train"], labels["train"], z["test"], labels["test"], about)
            for key in rows:
                rows[key].append(scores[key])
            test_codes[t] = z["test"]
            chance = scores["chance_accuracy"]
        ends = [test_codes[t] if t in test_codes else codes_at(net, t, {"test": images["test"]}, bn_images, batch_size, device, noise)["test"]
                for t in (0.0, 1.0)]
        rows["cka_start"] = [linear_cka(test_codes[t], ends[0]) for t in ts]
        rows["cka_end"] = [linear_cka(test_codes[t], ends[1]) for t in ts]
        out[name] = rows
    return {"t": ts, "chance_accuracy": chance, "paths": out}


def run_probes(args: argparse.Namespace, data_cfg: dict, paths: dict, train_images: torch.Tensor, test_images: torch.Tensor,
               bn_images: torch.Tensor, ts: list[float], columns: list[int], device: torch.device, noise: float = 0.0) -> dict:
    """--probe: the probes along every path, or why there are none (a dataset without attribute labels)."""
    train_labels, test_labels = load_labels(data_cfg, "train"), load_labels(data_cfg, "test")
    if train_labels is None or test_labels is None:
        reason = labels_unavailable(data_cfg) or "the dataset has no attribute labels"
        print(f"note: no linear probes: {reason}")
        return {"skipped": reason}
    n_train, n_test = min(args.probe_train_images, len(train_images)), min(args.test_images, len(test_images))
    images = {"train": train_images[:n_train], "test": test_images[:n_test]}
    labels = {"train": {k: v[:n_train] for k, v in train_labels[0].items()}, "test": {k: v[:n_test] for k, v in test_labels[0].items()}}
    probe_ts = args.probe_t if args.probe_t is not None else [ts[i] for i in columns]
    result = probe_paths(paths, sorted(probe_ts), images, labels, train_labels[1], bn_images=bn_images,
                         batch_size=args.eval_batch_size, device=device, noise=noise)
    return {**result, "labels": train_labels[1], "train_images": n_train, "test_images": n_test, "ridge": RIDGE,
            "definition": "linear probes of the code z: ridge regression on standardised codes of the training images (one-hot "
                          "targets, argmax, for class attributes), scored on the test images: mean accuracy over class attributes, "
                          "mean R^2 over continuous ones, SE over test images; CKA: linear CKA of the test codes at t with those at t = 0 and 1"}


def print_probes(probes: dict | None) -> None:
    if not probes or "paths" not in probes:
        return
    print(f"\nlinear probes of the code at t = {', '.join(f'{t:.2f}' for t in probes['t'])} "
          f"(chance accuracy {probes['chance_accuracy']:.3f}):")
    for name, rows in probes["paths"].items():
        print(f"{name:16} accuracy {' '.join(f'{a:.3f}' for a in rows['accuracy'])}   R^2 {' '.join(f'{r:.3f}' for r in rows['r2'])}   "
              f"CKA with t=0 {' '.join(f'{c:.2f}' for c in rows['cka_start'])}")
