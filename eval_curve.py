"""Evaluate a fitted curve against the straight segment: `python eval_curve.py --num_points 61`.

For each of num_points values of t in [0, 1], on the curve and on the segment between the same
endpoints (with --aligned also on the segment to B permuted to match A, align.py): BatchNorm
statistics recomputed at t, then train and test loss (the group's loss, and MSE) as mean +-
standard error, and the weight-space length element. The default estimator evaluates a few
anchors (the ends and --anchors) on every image of both splits and, at every other t, a fixed
subset whose mean it corrects with the anchors' per-image losses as control variates. Writes an
evaluation JSON (per-t values and per-path summaries with barrier heights), an npz of
reconstructions of fixed test images, and PNG grids (rows = images, columns = t), one per path.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

import ae
from lib import align
from lib import cli
import curves
import data
from lib import probe
from lib import training
from fit_curve import CURVE_DIR, convergence
from lib.files import UserError, atomic_write, ensure_dir, file_sha256, load_curve, save_ae, write_json

EVAL_FORMAT = "aemc-eval-v1"
METRICS = ("train_loss", "test_loss", "train_mse", "test_mse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--ckpt", default=None, help=f"curve checkpoint (default: the newest .pt in {CURVE_DIR}, the one fit_curve.py wrote last)")
    p.add_argument("--num_points", "--num-points", dest="num_points", type=cli.at_least_two, default=61,
                   help="number of evenly spaced t in [0, 1]")
    p.add_argument("--images", type=cli.positive_int, default=4, help="fixed test images reconstructed along each path")
    p.add_argument("--columns", type=cli.at_least_two, default=None,
                   help="values of t shown in the reconstruction grids (default: 7, or num_points if fewer)")
    add_subset_args(p, "each t", EVAL_SUBSETS)
    p.add_argument("--estimator", default="control-variates", choices=ESTIMATORS,
                   help="control-variates (default): the ends and --anchors are evaluated on every image of both splits, every "
                        "other t on the subsets, whose means are corrected by regression on the anchors' per-image losses (the "
                        "mean over the whole split, with an honest standard error); subset: the plain means of the subsets")
    p.add_argument("--anchors", type=cli.unit_float, nargs="*", default=list(ANCHORS), metavar="T",
                   help="control-variates only: values of t evaluated on every image besides the ends 0 and 1 (the "
                        "segment's middle is far from both ends: there the ends' losses predict little); none: the ends alone")
    p.add_argument("--save-t", type=cli.unit_float, nargs="+", default=[], metavar="T",
                   help="also save the network at these t (BatchNorm recomputed) as autoencoder checkpoints <out>.t<T>.pt, usable like any endpoint")
    p.add_argument("--aligned", action="store_true",
                   help="also evaluate the aligned segment: from A to B with B's units permuted to match A's (weight matching, align.py)")
    p.add_argument("--probe", action="store_true",
                   help="also fit linear probes of the 128-d code to the images' attributes at --probe-t on every path (synthetic "
                        "faces: their generator's attributes; CelebA: list_attr_celeba; folders: none, skipped with a note), and "
                        "the linear CKA of the code at t with the codes at the ends")
    p.add_argument("--probe-t", type=cli.unit_float, nargs="+", default=None, metavar="T",
                   help="values of t probed (default: those of the reconstruction grids' columns)")
    p.add_argument("--probe-train-images", type=cli.positive_int, default=2000,
                   help="training images whose codes fit each probe (scored on the --test-images test images)")
    p.add_argument("--vgg-weights", default=None, help="perceptual group only: the VGG16 weight file, when the endpoints used one")
    training.add_precision_arg(p, default="fp32")
    data.add_data_args(p, inherit=True)
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help="evaluation JSON (default: beside the curve, <curve>.eval.json); npz and PNGs go beside it")
    return p.parse_args(argv)


ESTIMATORS = ("control-variates", "subset")
ANCHORS = (0.5,)  # besides the ends; values measured in the README (Performance)
EVAL_SUBSETS = {"bn_images": 1000, "train_images": 1000, "test_images": 1000}


def add_subset_args(p: argparse.ArgumentParser, where: str, defaults: dict | None = None) -> None:
    """The fixed image subsets every evaluated network is measured on (the first images of each split)."""
    d = defaults or {"bn_images": 2000, "train_images": 2000, "test_images": 2000}
    p.add_argument("--bn-images", type=cli.positive_int, default=d["bn_images"], help=f"training images for the BatchNorm statistics at {where}")
    p.add_argument("--train-images", type=cli.positive_int, default=d["train_images"], help=f"training images for the train loss at {where}")
    p.add_argument("--test-images", type=cli.positive_int, default=d["test_images"], help=f"test images for the test loss at {where}")
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=128,
                   help="images per forward pass (on 2 CPU cores, 128 ran 25%% faster per image than 500)")


def newest_curve() -> Path:
    """The curve checkpoint fit_curve.py wrote last in its default folder."""
    found = [p for p in CURVE_DIR.glob("*.pt") if not p.name.endswith(".resume.pt")]
    if not found:
        raise UserError(f"no curve checkpoint in {CURVE_DIR}; run fit_curve.py first or pass --ckpt")
    return max(found, key=lambda p: p.stat().st_mtime)


def segment_of(net: curves.CurveNet) -> curves.CurveNet:
    """The straight segment between the curve's two endpoints: the same machinery with 2 bends."""
    return curves.segment(net.template, net.state_dict_at(0.0), net.state_dict_at(1.0))


def paired_se(diff: np.ndarray, population: int | None = None, subset_se: float = 0.0) -> float:
    """Standard error of the mean of per-image differences (the same images at two values of t). With
    `population` (the split's size, when the means are estimated for the whole split from these images by
    control variates) the sampling error of the split itself, var/population, plus `subset_se`**2, the
    estimator's own error against the whole split's mean."""
    if len(diff) < 2:
        return float(subset_se)
    return float(math.sqrt(diff.var(ddof=1) / (population or len(diff)) + subset_se ** 2))


def control_variate_mean(y: np.ndarray, controls: np.ndarray) -> dict:
    """The regression estimator of the mean of a quantity over a whole split of N images, from its values
    `y` on the split's first n images and `controls` [N, K] known on all N (the anchors' per-image values):
    mean(y) + (mean of the controls over all N - over the first n) @ beta, with beta fitted by least squares
    on the n images. Returns the estimate, `se_subset` (its standard error against the whole split's mean,
    from the residual variance, with the finite-population correction), `se` (against the population the
    split samples: var(y)/N added) and `r2` (the share of y's variance the controls explain)."""
    y, controls = np.asarray(y, dtype=float), np.asarray(controls, dtype=float).reshape(len(controls), -1)
    n, big_n = len(y), len(controls)
    x = controls[:n] - controls[:n].mean(axis=0)
    yc = y - y.mean()
    beta, _, rank, _ = np.linalg.lstsq(x, yc, rcond=None) if n > controls.shape[1] + 1 else (np.zeros(controls.shape[1]), 0, 0, 0)
    resid = yc - x @ beta
    estimate = y.mean() + (controls.mean(axis=0) - controls[:n].mean(axis=0)) @ beta
    dof = n - int(rank) - 1
    residual_var = float(resid @ resid / dof) if dof > 0 else float(y.var(ddof=1)) if n > 1 else 0.0
    se_subset = math.sqrt(residual_var / n * (1 - n / big_n)) if n < big_n else 0.0
    total = float(yc @ yc)
    return {"estimate": float(estimate), "se_subset": se_subset,
            "se": math.sqrt((float(y.var(ddof=1)) if n > 1 else 0.0) / big_n + se_subset ** 2),
            "r2": 1 - float(resid @ resid) / total if total > 0 else 1.0}


NEAR_END = 0.25  # "near the ends": the first and last quarter of t


def summarize(values: list[float], t: list[float], dl: list[float], per_image: np.ndarray | None = None,
              population: int | None = None, subset_se: list[float] | None = None) -> dict:
    """Ends, min, max, mean, the length-weighted mean (trapezoids weighted by the length element,
    as the reference evaluation does) and the barrier over the line between the end values.

    With `per_image` ([len(t), images], the same images at every t) also the standard errors of
    the barrier and of the excess of the maximum over the worse end, paired over images, and
    `below_ends`: the deepest point near an end that lies below both ends by more than 2 SE. When
    `values` are control-variate estimates for a whole split of `population` images, `subset_se`
    (per t; 0 at the ends, which are anchors) is each estimate's own error (see paired_se)."""
    v, t = np.asarray(values, dtype=float), np.asarray(t, dtype=float)
    dl = np.asarray(dl, dtype=float)
    excess = v - ((1 - t) * v[0] + t * v[-1])
    i = int(np.argmax(excess))
    ends_mean = (v[0] + v[-1]) / 2
    length = dl[1:].sum()
    integral = float(np.sum(0.5 * (v[:-1] + v[1:]) * dl[1:]) / length) if length > 0 else float(v.mean())
    worse, top = (0 if v[0] >= v[-1] else len(v) - 1), int(np.argmax(v))
    out = {"start": float(v[0]), "end": float(v[-1]), "min": float(v.min()), "max": float(v.max()),
           "mean": float(v.mean()), "integral": integral, "barrier": float(excess[i]), "t_barrier": float(t[i]),
           "barrier_rel": float(excess[i] / ends_mean) if ends_mean > 0 else math.nan,
           "excess": float(v[top] / v[worse] - 1) if v[worse] > 0 else math.nan,
           "barrier_se": None, "barrier_rel_se": None, "excess_se": None, "below_ends": None}
    if per_image is None:
        return out
    p = np.asarray(per_image, dtype=float)
    own = np.zeros(len(v)) if subset_se is None else np.asarray(subset_se, dtype=float)
    se = lambda diff, k: paired_se(diff, population, own[k])  # noqa: E731  (k: the point compared with an end)
    out["barrier_se"] = se(p[i] - ((1 - t[i]) * p[0] + t[i] * p[-1]), i)
    out["barrier_rel_se"] = float(out["barrier_se"] / ends_mean) if ends_mean > 0 else math.nan
    out["excess_se"] = float(se(p[top] - p[worse], top) / v[worse]) if v[worse] > 0 else math.nan
    better = min(v[0], v[-1])
    for k in np.flatnonzero((t > 0) & (t < 1) & ((t <= NEAR_END) | (t >= 1 - NEAR_END))):
        z = min((v[0] - v[k]) / max(se(p[k] - p[0], k), 1e-300), (v[-1] - v[k]) / max(se(p[k] - p[-1], k), 1e-300))
        depth = (better - v[k]) / better if better > 0 else math.nan
        if z > 2 and (out["below_ends"] is None or depth > out["below_ends"]["depth"]):
            out["below_ends"] = {"t": float(t[k]), "value": float(v[k]), "depth": float(depth), "z": float(z)}
    return out


def target_features(loss_fn, split_images: dict, batch_size: int, device: torch.device) -> dict:
    """VGG features of the fixed evaluation images, computed once for all t and both paths (the
    perceptual loss's targets never change), or Nones when they would not fit in memory."""
    loss_fn = training.as_objective(loss_fn).loss_fn  # targets are the clean images, whatever the objective
    if not isinstance(loss_fn, ae.PerceptualLoss):
        return {split: None for split in split_images}
    per_image = sum(f.numel() * 4 for f in loss_fn.features(torch.zeros(1, 3, 64, 64, device=device)))
    if per_image * sum(len(v) for v in split_images.values()) > training.FEATURE_CACHE_BYTES:
        return {split: None for split in split_images}
    with torch.inference_mode():
        return {split: [loss_fn.features(x) for x in data.batches(images, batch_size, device=device, memory_format=torch.channels_last)]
                for split, images in split_images.items()}


def recompute_bn(net: torch.nn.Module, loss_fn, bn_images: torch.Tensor, batch_size: int, device: torch.device,
                 t: float | None = None) -> None:
    """BatchNorm statistics of `net` (for a CurveNet, at t) recomputed on `bn_images` as the objective's model sees them."""
    inputs = data.batches(bn_images, batch_size, device=device, memory_format=torch.channels_last)
    curves.update_bn(net, training.objective_batches(loss_fn, inputs, batch_size), t=t)


def evaluate_point(net: torch.nn.Module, split_images: dict, loss_fn, *, bn_images: torch.Tensor, batch_size: int,
                   device: torch.device, t: float | None = None, features: dict | None = None,
                   precision: str = "fp32") -> dict[str, torch.Tensor]:
    """BatchNorm statistics recomputed (for a CurveNet, at t) on the inputs the objective sees, then the per-image
    values of every split: {"train_loss": tensor, "train_mse": ..., "test_loss": ..., "test_mse": ...}, and for a
    sparse objective also "<split>_code_abs" and "<split>_code_zero" (training.per_image_losses)."""
    recompute_bn(net, loss_fn, bn_images, batch_size, device, t)
    out = {}
    for split, images in split_images.items():
        values = training.per_image_losses(net, images, loss_fn, batch_size=batch_size, device=device, t=t,
                                           target_features=(features or {}).get(split), precision=precision)
        out.update({f"{split}_{name}": value for name, value in values.items()})
    return out


def anchor_values(paths: dict, anchor_ts: list[float], population: dict, loss_fn, *, bn_images: torch.Tensor, batch_size: int,
                  device: torch.device, precision: str = "fp32") -> dict[str, dict[float, dict[str, np.ndarray]]]:
    """The control variates: per path, at every anchor t, the per-image values of evaluate_point on every image
    of each split in `population`. A network met on several paths (the curve's and the segment's ends are the
    same weights) is evaluated once."""
    features = target_features(loss_fn, population, batch_size, device)
    done, out = {}, {name: {} for name in paths}
    jobs = [(name, t) for name in paths for t in anchor_ts]
    for name, t in tqdm(jobs, desc=f"anchors ({sum(map(len, population.values()))} images each)", leave=False, disable=None,
                        dynamic_ncols=True):
        net = paths[name]
        key = hashlib.sha256(net.weights(t).detach().cpu().numpy().tobytes()).hexdigest()
        if key not in done:
            values = evaluate_point(net, population, loss_fn, bn_images=bn_images, batch_size=batch_size, device=device, t=t,
                                    features=features, precision=precision)
            done[key] = {k: v.double().numpy() for k, v in values.items()}
        out[name][t] = done[key]
    return out


def split_of(name: str) -> str:
    """The split of a per-image quantity of evaluate_point ("train_loss" -> "train")."""
    return name.split("_", 1)[0]


def anchor_at(anchors: dict | None, t: float) -> float | None:
    """The anchor that is this t (a grid's t may differ from it in the last bits), or None."""
    return next((a for a in anchors or () if abs(a - t) < 1e-9), None)


def evaluate_path(net: curves.CurveNet, ts: list[float], split_images: dict, loss_fn, *, bn_images: torch.Tensor,
                  shown: torch.Tensor, columns: list[int], batch_size: int, device: torch.device, desc: str,
                  features: dict | None = None, precision: str = "fp32", anchors: dict | None = None) -> dict:
    """Losses (mean and standard error) at every t, the length element, and reconstructions at `columns`;
    for a sparse objective also the code statistics of evaluate_point at every t (summarised only for METRICS).

    Without `anchors`, the means of the subsets `split_images`. With `anchors` (this path's entry of
    anchor_values: {t: per-image values on every image of each split}), the control-variate estimator: at an
    anchor, the whole split's mean; elsewhere the subsets' means corrected by control_variate_mean, with
    "<name>_se_subset" (the error against the whole split's mean) and "<name>_r2" beside "<name>_se"."""
    out = {name: [] for name in METRICS}
    out.update({f"{name}_se": [] for name in METRICS})
    out["dl"], out["estimator"], recon, previous = [], [], [], None
    per_image, population = {}, None
    if anchors:
        population = {split: len(next(iter(anchors.values()))[f"{split}_loss"]) for split in split_images}
    net.eval()
    for i, t in enumerate(tqdm(ts, desc=desc, leave=False, disable=None, dynamic_ncols=True)):
        anchor = anchor_at(anchors, t)
        if anchor is None:
            values = evaluate_point(net, split_images, loss_fn, bn_images=bn_images, batch_size=batch_size, device=device, t=t,
                                    features=features, precision=precision)
            values = {name: value.double().numpy() for name, value in values.items()}
        else:  # its first images are the subsets' values
            values = {name: full[: len(split_images[split_of(name)])] for name, full in anchors[anchor].items()}
            if i in columns:  # the reconstructions below need the statistics at this t
                recompute_bn(net, loss_fn, bn_images, batch_size, device, t)
        out["estimator"].append("subset" if not anchors else "anchor" if anchor is not None else "control-variates")
        for name, value in values.items():
            if not anchors:
                mean, se = training.mean_and_se(torch.from_numpy(value))
                fit = None
            elif anchor is not None:
                full = anchors[anchor][name]
                fit = {"estimate": float(full.mean()), "se": float(full.std(ddof=1) / math.sqrt(len(full))) if len(full) > 1 else 0.0,
                       "se_subset": 0.0, "r2": None}
            else:
                fit = control_variate_mean(value, np.stack([anchors[a][name] for a in sorted(anchors)], axis=1))
            if fit is not None:
                mean, se = fit["estimate"], fit["se"]
                out.setdefault(f"{name}_se_subset", []).append(fit["se_subset"])
                out.setdefault(f"{name}_r2", []).append(fit["r2"])
            out.setdefault(name, []).append(mean)
            out.setdefault(f"{name}_se", []).append(se)
            per_image.setdefault(name, []).append(value)
        weights = net.weights(t)
        out["dl"].append(0.0 if previous is None else float((weights - previous).norm()))
        previous = weights
        if i in columns:
            net.eval()
            with torch.inference_mode():
                recon.append(net(shown, t=t).cpu())
    out["length"] = float(sum(out["dl"]))
    out["summary"] = {name: summarize(out[name], ts, out["dl"], np.stack(per_image[name]),
                                      population=population and population[split_of(name)],
                                      subset_se=out.get(f"{name}_se_subset")) for name in METRICS}
    return out, torch.stack(recon) if recon else None


@torch.inference_mode()
def codes_at(net: curves.CurveNet, t: float, images: dict[str, torch.Tensor], bn_images: torch.Tensor, batch_size: int,
             device: torch.device) -> dict[str, torch.Tensor]:
    """The codes z (the bottleneck) of each set of `images` by the network at t, after one
    recomputation of the BatchNorm statistics at t."""
    curves.update_bn(net, data.batches(bn_images, batch_size, device=device, memory_format=torch.channels_last), t=t)
    net.eval()
    net.set_t(t)
    return {name: torch.cat([net.net.encode(x).float().cpu()
                             for x in data.batches(x_set, batch_size, device=device, memory_format=torch.channels_last)])
            for name, x_set in images.items()}


def probe_paths(paths: dict, ts: list[float], images: dict, labels: dict, about: dict, *, bn_images: torch.Tensor,
                batch_size: int, device: torch.device) -> dict:
    """At every t of every path: linear probes of the code fitted on the training images' codes and
    scored on the test images' (probe.probe), and the linear CKA of the test codes with those at t = 0 and 1."""
    out, chance = {}, None
    for name, net in paths.items():
        net = net.to(device, memory_format=torch.channels_last)
        rows = {key: [] for key in ("accuracy", "accuracy_se", "r2", "r2_se", "attributes")}
        test_codes = {}
        for t in tqdm(ts, desc=f"probes on the {name}", leave=False, disable=None, dynamic_ncols=True):
            z = codes_at(net, t, images, bn_images, batch_size, device)
            scores = probe.probe(z["train"], labels["train"], z["test"], labels["test"], about)
            for key in rows:
                rows[key].append(scores[key])
            test_codes[t] = z["test"]
            chance = scores["chance_accuracy"]
        ends = [test_codes[t] if t in test_codes else codes_at(net, t, {"test": images["test"]}, bn_images, batch_size, device)["test"]
                for t in (0.0, 1.0)]
        rows["cka_start"] = [probe.linear_cka(test_codes[t], ends[0]) for t in ts]
        rows["cka_end"] = [probe.linear_cka(test_codes[t], ends[1]) for t in ts]
        out[name] = rows
    return {"t": ts, "chance_accuracy": chance, "paths": out}


def fit_record(ckpt: dict) -> dict | None:
    """The fit's settings, its per-epoch history and whether it converged, for the plot and the report."""
    history = ckpt.get("history")
    if not history:
        return None
    config = ckpt["config"]
    return {"epochs": config.get("epochs"), "schedule": config.get("schedule", "constant"), "lr": config.get("lr"),
            "history": history, **convergence(history)}


def save_point(net: curves.CurveNet, t: float, path: Path, config: dict, bn_images: torch.Tensor, batch_size: int,
               device: torch.device, loss_fn=ae.mse) -> Path:
    """Save phi(t), with BatchNorm statistics recomputed at t (on the inputs `loss_fn`'s objective sees), as an
    autoencoder checkpoint."""
    recompute_bn(net, loss_fn, bn_images, batch_size, device, t)
    endpoint = config["endpoints"][0]["config"]
    point_config = {**endpoint, "seed": None, "curve_point": {"curve": config["curve"], "t": t, "endpoints": [e["path"] for e in config["endpoints"]]}}
    return save_ae(path, net.export(t), point_config, {"t": t})


def save_grid(path: Path, recon: torch.Tensor) -> None:
    """PNG grid of reconstructions [columns, images, 3, H, W]: one row per image, one column per t."""
    grid = make_grid(recon.transpose(0, 1).reshape(-1, *recon.shape[2:]), nrow=recon.shape[0], padding=2, pad_value=1.0)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def run_probes(args: argparse.Namespace, data_cfg: dict, paths: dict, train_images: torch.Tensor, test_images: torch.Tensor,
               bn_images: torch.Tensor, ts: list[float], columns: list[int], device: torch.device) -> dict:
    """--probe: the probes along every path, or why there are none (a dataset without attribute labels)."""
    train_labels, test_labels = data.load_labels(data_cfg, "train"), data.load_labels(data_cfg, "test")
    if train_labels is None or test_labels is None:
        reason = data.labels_unavailable(data_cfg) or "the dataset has no attribute labels"
        print(f"note: no linear probes: {reason}")
        return {"skipped": reason}
    n_train, n_test = min(args.probe_train_images, len(train_images)), min(args.test_images, len(test_images))
    images = {"train": train_images[:n_train], "test": test_images[:n_test]}
    labels = {"train": {k: v[:n_train] for k, v in train_labels[0].items()}, "test": {k: v[:n_test] for k, v in test_labels[0].items()}}
    probe_ts = args.probe_t if args.probe_t is not None else [ts[i] for i in columns]
    result = probe_paths(paths, sorted(probe_ts), images, labels, train_labels[1], bn_images=bn_images,
                         batch_size=args.eval_batch_size, device=device)
    return {**result, "labels": train_labels[1], "train_images": n_train, "test_images": n_test, "ridge": probe.RIDGE,
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


def print_table(result: dict) -> None:
    print(f"\n{result['curve']} curve vs segment, {result['group']} loss ({Path(result['curve_ckpt']).name}):")
    width = max(8, *map(len, result["paths"]))
    print(f"{'path':{width}} {'metric':10} {'t=0':>9} {'t=1':>9} {'max':>9} {'mean':>9} {'integral':>9} {'barrier':>9} {'rel':>7}")
    for path in result["paths"]:
        for name in ("train_loss", "test_loss"):
            s = result["paths"][path]["summary"][name]
            print(f"{path:{width}} {name:10} {s['start']:9.5f} {s['end']:9.5f} {s['max']:9.5f} {s['mean']:9.5f} "
                  f"{s['integral']:9.5f} {s['barrier']:9.5f} {100 * s['barrier_rel']:6.1f}%")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    ckpt_path = Path(args.ckpt) if args.ckpt else newest_curve()
    if not args.ckpt:
        print(f"evaluating {ckpt_path} (newest curve in {CURVE_DIR}; pass --ckpt to choose)")
    net, ckpt = load_curve(ckpt_path)
    config = ckpt["config"]
    if args.columns is None:
        args.columns = min(7, args.num_points)
    if args.columns > args.num_points:
        raise UserError(f"--columns {args.columns} exceeds --num_points {args.num_points}; lower --columns")
    out = Path(args.out) if args.out else ckpt_path.with_name(ckpt_path.stem + ".eval.json")
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    ensure_dir(out.parent)
    data_cfg = data.data_config(args, base=config["data"])
    train_images = data.load_split(data_cfg, "train")
    test_images = data.load_split(data_cfg, "test")
    loss_fn = training.objective_from_config(config, args.vgg_weights, device)  # the loss the curve was fitted with
    # Fixed subsets: the first images of each split (splits are already in a fixed random order).
    split_images = {"train": train_images[: args.train_images], "test": test_images[: args.test_images]}
    bn_images = train_images[: args.bn_images]
    shown_u8 = test_images[: args.images]
    shown = shown_u8.to(device).float().div(255).contiguous(memory_format=torch.channels_last)
    ts = np.linspace(0.0, 1.0, args.num_points).tolist()
    columns = sorted({int(round(i * (args.num_points - 1) / (args.columns - 1))) for i in range(args.columns)})

    precision = training.resolve_precision(args.precision, device, config["loss"])
    anchor_ts = sorted({0.0, 1.0, *args.anchors}) if args.estimator == "control-variates" else []
    t0 = time.time()
    result = {"format": EVAL_FORMAT, "curve_ckpt": str(ckpt_path), "curve_sha256": file_sha256(ckpt_path),
              "curve": config["curve"], "num_bends": config["num_bends"], "loss": config["loss"],
              "group": ae.group_of(config), **ae.variant_settings(config),
              "objective": config.get("objective", "uniform"), "aligned_curve": bool(config.get("aligned")),
              "vgg_weights": config.get("vgg_weights"), "vgg_layers": config.get("vgg_layers"), "model": config["model"], "data": data_cfg,
              "endpoints": [e["path"] for e in config["endpoints"]],
              "endpoint_seeds": [e["config"].get("seed") for e in config["endpoints"]],
              "settings": {"num_points": args.num_points, "bn_images": len(bn_images), "train_images": len(split_images["train"]),
                           "test_images": len(split_images["test"]), "images": len(shown), "columns": len(columns),
                           "estimator": args.estimator, "anchors": anchor_ts,
                           "population": {"train": len(train_images), "test": len(test_images)},
                           "precision": precision, "eval_noise_seed": training.EVAL_NOISE_SEED,
                           **({"near_zero": training.NEAR_ZERO} if loss_fn.l1 else {})},
              "t": ts, "columns_t": [ts[i] for i in columns], "fit": fit_record(ckpt), "paths": {}}
    recon = {}
    paths = {"curve": net, "segment": segment_of(net)}
    if args.aligned:
        paths["aligned_segment"] = align.aligned_segment(net)
        result["alignment"] = paths["aligned_segment"].alignment
    if args.probe:
        result["probe"] = run_probes(args, data_cfg, paths, train_images, test_images, bn_images, ts, columns, device)
    paths = {name: path_net.to(device, memory_format=torch.channels_last) for name, path_net in paths.items()}
    anchors = anchor_values(paths, anchor_ts, {"train": train_images, "test": test_images}, loss_fn, bn_images=bn_images,
                            batch_size=args.eval_batch_size, device=device, precision=precision) if anchor_ts else {}
    features = target_features(loss_fn, split_images, args.eval_batch_size, device)  # after the anchors': one set in memory at a time
    for name, path_net in paths.items():
        result["paths"][name], recon[name] = evaluate_path(
            path_net, ts, split_images, loss_fn, bn_images=bn_images, shown=shown, columns=columns,
            batch_size=args.eval_batch_size, device=device, desc=f"{name} ({args.num_points} points)", features=features,
            precision=precision, anchors=anchors.get(name))
    result["seconds"] = time.time() - t0

    to_u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    npz, grids = out.with_name(f"{stem}.npz"), {name: out.with_name(f"{stem}.{name}.png") for name in paths}
    atomic_write(npz, lambda f: np.savez_compressed(f, t=np.asarray(result["columns_t"]), originals=shown_u8.numpy(),
                                                    **{name: to_u8(images) for name, images in recon.items()}))
    for name, png in grids.items():
        save_grid(png, recon[name])
    result["files"] = {"npz": npz.name, **{f"{name}_png": png.name for name, png in grids.items()},
                       "points": [save_point(net, t, out.with_name(f"{stem}.t{t:.3f}.pt"), config, bn_images, args.eval_batch_size,
                                             device, loss_fn).name for t in args.save_t]}
    write_json(out, result)  # last: its presence means the evaluation and its images are complete
    print_table(result)
    print_probes(result.get("probe"))
    print(f"\nwrote {out}, {npz.name}, {', '.join(png.name for png in grids.values())} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    cli.run(main)
