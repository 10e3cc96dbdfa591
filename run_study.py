"""The whole study in one command: `python run_study.py` (the quick preset, on built-in data).

Trains 3 endpoints per loss group (mse, perceptual), fits a curve between every pair within each
group, evaluates every curve and its straight segment (and the aligned segment, align.py, where
the `aligned` setting says so), maps the loss in the plane of each group's first curve (the
paper's Figure 1), draws the figures and writes a report
that answers the question from the numbers. Each step calls the same `main()` the single
scripts run. A step whose output exists and was made with the same settings (and the same
upstream files) is skipped, so an interrupted study picks up where it stopped; `--force` redoes.
`--executor ray` runs the independent steps in parallel as Ray tasks (executors.py).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import ae
import curves
import data
import ensemble
import report
from lib import cli, executors, training
from lib.executors import folder_lock
from lib.files import STUDY_FORMAT, UserError, ensure_dir, file_sha256, write_json
from lib.vgg import vgg16_features

# Every value can be overridden by the flag of the same name. A value given per loss group (a dict)
# is spent where it buys quality: an MSE image costs about a fifth of a perceptual one (docs/performance.md).
PRESETS = {
    "quick": {  # built-in synthetic faces, sized for a 2-core CPU (docs/study.md gives its times)
        "dataset": "synthetic", "data_root": None, "synthetic_size": 2000, "n_train": None, "n_test": 200,
        "width": 16, "latent_dim": 128, "batch_size": {"mse": 32, "perceptual": 16}, "epochs": {"mse": 16, "perceptual": 5},
        "lr": 3e-3, "curve_epochs": {"mse": 16, "perceptual": 3}, "curve_lr": 3e-3, "schedule": "ref", "precision": "auto", "num_points": 21, "estimator": "control-variates", "bn_images": 200,
        # the control variates' anchors see every test image and the first 500 training images (of 2,000), the population
        # whose train loss an evaluation estimates: a quarter of the anchors' cost, the train loss's SE up to 3.3% (from
        # 2.9%), still below the test loss's 3.0-3.8% that the verdicts read (measured 2026-12-02, docs/study.md)
        "anchor_images": 500, "train_images": 64, "test_images": 64, "vgg_weights": "imagenet", "vgg_layers": ["relu1_2"],
        # SSIM costs about one forward pass per image: on 16 of the 64 test images it adds about 12% to an evaluated point
        # (all 64: 48%, measured 2026-12-02); the ends and anchors are measured on every test image all the same
        "quality_images": 16,
        "fge_cycles": 2, "fge_cycle": 0.5, "ensemble_k": 4, "ensemble_points": 11, "sse": False, "ensemble_losses": ["mse"],
        "select": ["uniform", "greedy", "diversity"], "valid_images": 200,
        "snapshots": {"mse": 1, "perceptual": 2}, "function_space_points": 11,  # per epoch; values of t per curve and segment
        "probe": True,
        "arclength": {"mse": True, "perceptual": False}, "aligned_curves": False,
        "seeds": [0, 1, 2], "losses": ["mse", "perceptual"], "aligned": {"mse": True, "perceptual": False}, "align": "activations",
        "plane_grid": {"mse": 9, "perceptual": 5},  # a perceptual grid point costs about 5 MSE ones
        # the mode-connecting complex of each group's endpoints (simplex.py), sized to cost at most 15% of the study
        # (docs/study.md): one connector, half the curves' epochs
        "simplex": True, "simplex_connectors": 1, "simplex_epochs": {"mse": 5, "perceptual": 1}, "simplex_points": {"mse": 6, "perceptual": 4},
        "simplex_num_points": 5, "simplex_grid": 0, "widths": None,
    },
    "full": {  # CelebA at 64x64, meant for one GPU
        "dataset": "celeba", "data_root": None, "synthetic_size": 10000, "n_train": None, "n_test": None,
        "width": 32, "latent_dim": 128, "batch_size": 128, "epochs": 30, "lr": 1e-3,
        "curve_epochs": 30, "curve_lr": 1e-3, "schedule": "ref", "precision": "auto", "num_points": 61, "estimator": "control-variates", "bn_images": 5000, "anchor_images": None, "train_images": 5000,
        "test_images": 5000, "vgg_weights": "imagenet", "vgg_layers": ["relu1_2", "relu2_2", "relu3_3"], "quality_images": 1000,
        "fge_cycles": 4, "fge_cycle": 2.0, "ensemble_k": 5, "ensemble_points": 21, "sse": True, "ensemble_losses": ["mse", "perceptual"],
        "select": ["uniform", "greedy", "diversity"], "valid_images": 500,
        "snapshots": 1, "function_space_points": 21,
        "probe": True,
        "arclength": True, "aligned_curves": True,
        "seeds": [0, 1, 2], "losses": ["mse", "perceptual"], "aligned": True, "align": "activations",
        "plane_grid": 21,
        "simplex": True, "simplex_connectors": 2, "simplex_epochs": 30, "simplex_points": 24, "simplex_num_points": 11,
        "simplex_grid": 8, "widths": None,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick", choices=PRESETS, help="quick (default): synthetic faces, CPU minutes; full: CelebA, one GPU")
    p.add_argument("--curve", default="bezier", choices=[*curves.CURVES, "both"], help="curve type(s) to fit (default: bezier)")
    p.add_argument("--num-bends", type=cli.at_least_two, default=3, help="bends per curve including the endpoints (default: 3)")
    p.add_argument("--out", default="runs/study", help="study folder (default: runs/study)")
    p.add_argument("--report", default=None, help="report path (default: <out>/report.md)")
    p.add_argument("--force", action="store_true", help="redo every step even if its output is up to date")
    def preset_help(key: str, text: str) -> str:
        shown = {name: (", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else "all" if value is None else value)
                 for name, value in ((name, PRESETS[name][key]) for name in PRESETS)}
        return f"{text} (preset quick: {shown['quick']}, full: {shown['full']})"

    p.add_argument("--seeds", type=int, nargs="+", default=None, help=preset_help("seeds", "endpoint seeds per group"))
    p.add_argument("--losses", nargs="+", choices=ae.LOSSES, default=None, help=preset_help("losses", "plain loss groups"))
    p.add_argument("--groups", nargs="+", default=None, metavar="GROUP",
                   help="loss groups instead of --losses: a loss with optional +noise=SIGMA (denoising) and +l1=LAMBDA (sparse), "
                        "e.g. mse perceptual mse+noise=0.1 mse+l1=1e-3; settings given per loss apply to its variants")
    p.add_argument("--dataset", choices=["synthetic", "celeba", "folder"], default=None, help=preset_help("dataset", "images"))
    p.add_argument("--data-root", default=None, help="folder holding CelebA (needed by the full preset) or an image tree")
    p.add_argument("--download", action="store_true", help="download CelebA into --data-root if it is not there")
    p.add_argument("--cache-dir", default="data/cache", help="where decoded datasets are cached (default: data/cache)")
    texts = {"synthetic_size": "synthetic training images", "n_train": "cap on training images", "n_test": "cap on test images",
             "width": "autoencoder width", "latent_dim": "bottleneck size", "batch_size": "batch size of training and fitting",
             "epochs": "endpoint training epochs", "curve_epochs": "curve fitting epochs", "simplex_epochs": "complex fitting epochs", "simplex_points": "random points evaluated per simplex of each complex", "bn_images": "images for BatchNorm statistics",
             "train_images": "training images evaluated at each t", "test_images": "test images evaluated at each t",
             "anchor_images": "training images of each evaluation's control-variate anchors, the population of its train loss",
             "quality_images": "test images whose reconstructions' PSNR and SSIM (and LPIPS) are measured at each t"}
    for key, text in texts.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=cli.positive_int, default=None, help=preset_help(key, text))
    p.add_argument("--num-points", type=cli.at_least_two, default=None, help=preset_help("num_points", "values of t evaluated per path"))
    p.add_argument("--estimator", choices=training.ESTIMATORS, default=None,
                   help=preset_help("estimator", "how the evaluations estimate each loss (eval_curve.py --estimator)"))
    p.add_argument("--lr", type=cli.positive_float, default=None, help=preset_help("lr", "endpoint learning rate"))
    p.add_argument("--curve-lr", type=cli.positive_float, default=None, help=preset_help("curve_lr", "curve learning rate"))
    p.add_argument("--schedule", choices=training.SCHEDULES, default=None,
                   help=preset_help("schedule", "learning-rate schedule of the endpoints and the curves (see train_ae.py --help)"))
    p.add_argument("--precision", choices=training.PRECISIONS, default=None,
                   help=preset_help("precision", "arithmetic of training, fitting and FGE (see train_ae.py --help); evaluation is fp32"))
    p.add_argument("--vgg-weights", default=None, help=preset_help(
        "vgg_weights", "imagenet, random, or a VGG16 .pth file; quick falls back to random when imagenet cannot be had"))
    p.add_argument("--vgg-layers", nargs="+", choices=list(ae.VGG_LAYERS), default=None, metavar="LAYER",
                   help=preset_help("vgg_layers", "VGG16 feature maps of the perceptual loss"))
    p.add_argument("--fge-cycles", type=cli.positive_int, default=None, help=preset_help("fge_cycles", "FGE cycles (models collected)"))
    p.add_argument("--fge-cycle", type=cli.positive_float, default=None, help=preset_help("fge_cycle", "FGE cycle length in epochs"))
    p.add_argument("--ensemble-k", type=cli.at_least_two, default=None, help=preset_help("ensemble_k", "curve points ensembled, ends included"))
    p.add_argument("--ensemble-points", type=cli.at_least_two, default=None, help=preset_help("ensemble_points", "values of t of Figure 2c"))
    p.add_argument("--sse", action=argparse.BooleanOptionalAction, default=None,
                   help=preset_help("sse", "also fit a snapshot ensemble as a baseline (--no-sse skips it)"))
    p.add_argument("--select", nargs="+", choices=ensemble.SELECTIONS, default=None, metavar="RULE", help=preset_help(
        "select", "rules choosing --ensemble-k members from the ensemble step's pool on validation images (ensemble.py --select)"))
    p.add_argument("--valid-images", type=cli.positive_int, default=None,
                   help=preset_help("valid_images", "validation images the ensemble selection sees"))
    p.add_argument("--ensemble-losses", nargs="+", choices=ae.LOSSES, default=None,
                   help=preset_help("ensemble_losses", "loss groups whose first pair gets the ensemble step"))
    p.add_argument("--plane-grid", type=cli.at_least_two, default=None,
                   help=preset_help("plane_grid", "grid points per side of the plane (Figure 1) of each group's first curve"))
    p.add_argument("--no-plane", action="store_true", help="skip the plane step (plane.py: Figure 1)")
    p.add_argument("--snapshots", type=cli.nonnegative_int, default=None,
                   help=preset_help("snapshots", "checkpoints kept per epoch along each endpoint's training (train_ae.py --snapshots)"))
    p.add_argument("--function-space-points", type=cli.at_least_two, default=None,
                   help=preset_help("function_space_points", "values of t per curve and segment in the function-space step"))
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=None, help=preset_help(
        "probe", "linear probes of the code along every path (eval_curve.py --probe; --no-probe skips them)"))
    p.add_argument("--no-function-space", action="store_true",
                   help="skip the function-space step (function_space.py: endpoints, snapshots, curve points and FGE members compared)")
    p.add_argument("--no-ensembles", action="store_true", help="skip the ensemble step (FGE and baselines)")
    p.add_argument("--no-simplex", action="store_true",
                   help="skip the simplex step (simplex.py: one mode-connecting complex over each group's endpoints)")
    p.add_argument("--simplex-connectors", type=cli.positive_int, default=None,
                   help=preset_help("simplex_connectors", "trainable vertices of each group's complex (simplex.py --connectors)"))
    p.add_argument("--arclength", action=argparse.BooleanOptionalAction, default=None, help=preset_help(
        "arclength", "also fit the first pair of each group with fit_curve.py --objective arclength and evaluate it, for the "
                     "report's comparison of the two objectives (--arclength / --no-arclength: every group)"))
    p.add_argument("--aligned-curves", action=argparse.BooleanOptionalAction, default=None, help=preset_help(
        "aligned_curves", "also fit the first pair of each group between A and B aligned to A (fit_curve.py --aligned) and "
                          "evaluate it, for the report's comparison with the plain curve (--aligned-curves / --no-aligned-curves: every group)"))
    p.add_argument("--aligned", action=argparse.BooleanOptionalAction, default=None, help=preset_help(
        "aligned", "also evaluate the aligned segment (B's units permuted to match A's, eval_curve.py --aligned); "
                   "--aligned or --no-aligned sets it for every group"))
    p.add_argument("--widths", type=cli.positive_int, nargs="+", default=None, metavar="W",
                   help="a width sweep instead of one study: the groups' endpoints, curves and evaluations (the aligned segment "
                        "by both matchers) at each width W, each in <out>/width<W>, then the sweep's report (default: no sweep)")
    p.add_argument("--width-epochs", type=width_epochs, nargs="+", default=None, metavar="W=E",
                   help="with --widths: train the endpoints of width W for E epochs (every group's) instead of --epochs, "
                        "so that wider autoencoders, which learn slower, reach a loss comparable to the narrow ones' "
                        "(default: the same epochs at every width)")
    p.add_argument("--align", choices=cli.ALIGN_METHODS, default=None, help=preset_help(
        "align", "how the aligned segments and aligned curves match B's units to A's (eval_curve.py --align)"))
    cli.add_device_arg(p)
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local (default): the steps one after another in this process, stopping at the first failure; "
                        "ray: independent steps in parallel as Ray tasks, on this machine or a cluster (pip install -r requirements-ray.txt)")
    p.add_argument("--threads-per-step", type=cli.positive_int, default=None, metavar="N",
                   help="torch threads of each step; with --executor ray also the CPUs each step's task asks for on a CPU study "
                        "(a CUDA study's task asks for 1 GPU and 1 CPU) (default: ray 1; local leaves torch's default)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: join the running Ray cluster at this address, or 'auto' for the one started on "
                        "this machine by `ray start --head` (default: start a local Ray instance for this run)")
    p.add_argument("--ray-cpus", type=cli.positive_int, default=None, metavar="N",
                   help="with --executor ray and no --ray-address: CPUs of the local Ray instance (default: every core)")
    return p.parse_args(argv)


def width_epochs(text: str) -> tuple[int, int]:
    """One --width-epochs item, W=E with both positive integers, as (W, E)."""
    try:
        width, epochs = (int(x) for x in text.split("="))
        if width > 0 and epochs > 0:
            return width, epochs
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not W=E (a width and its epochs, both positive integers, e.g. 64=32)")


def resolve_settings(args: argparse.Namespace) -> dict:
    """The preset's values with every flag the user gave laid over them."""
    settings = dict(PRESETS[args.preset])
    for key in settings:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    settings["curves"] = list(curves.CURVES) if args.curve == "both" else [args.curve]
    settings.update(ensembles=not args.no_ensembles, num_bends=args.num_bends, cache_dir=args.cache_dir, download=args.download, device=args.device, preset=args.preset)
    if args.groups and args.losses:
        raise UserError("--losses and --groups both name the loss groups; give one of them")
    groups = [ae.group_name(**parse_group(g)) for g in args.groups] if args.groups else list(settings["losses"])
    if len(set(groups)) != len(groups):
        raise UserError(f"--groups has repeats ({', '.join(groups)}); name each group once")
    settings["groups"] = groups
    settings["losses"] = list(dict.fromkeys(parse_group(g)["loss"] for g in groups))
    settings["plane"] = not args.no_plane
    settings["function_space"] = not args.no_function_space
    settings["simplex"] = settings["simplex"] and not args.no_simplex
    if settings["widths"] and (len(set(settings["widths"])) != len(settings["widths"]) or args.width is not None):
        raise UserError(f"--widths {' '.join(map(str, settings['widths']))}: give each width once, and no --width beside it")
    settings["width_epochs"] = dict(args.width_epochs or [])
    strays = sorted(set(settings["width_epochs"]) - set(settings["widths"] or []))
    if strays or len(settings["width_epochs"]) != len(args.width_epochs or []):
        raise UserError("--width-epochs " + (f"names width {', '.join(map(str, strays))}, which is not in --widths" if strays else
                        "names a width twice") + "; give W=E only for widths of --widths, each once")
    if len(settings["seeds"]) < 2:
        raise UserError("a study needs at least 2 seeds per group to form a pair; pass --seeds 0 1 2")
    if len(set(settings["seeds"])) != len(settings["seeds"]):
        raise UserError(f"--seeds has repeats ({settings['seeds']}); give distinct seeds")
    if settings["dataset"] != "synthetic" and not settings["data_root"]:
        raise UserError(f"the {args.preset} preset uses --dataset {settings['dataset']}, which needs --data-root DIR "
                        f"(docs/data.md gives the CelebA layout)")
    return settings


def choose_vgg_weights(settings: dict) -> tuple[str, str | None]:
    """The VGG16 weights for the perceptual group, and why we fell back to random ones (quick only)."""
    if "perceptual" not in settings["losses"] or settings["vgg_weights"] != "imagenet":
        return settings["vgg_weights"], None
    try:
        vgg16_features("imagenet")
        return "imagenet", None
    except UserError as e:
        if settings["preset"] != "quick":
            raise
        reason = str(e)
        print(f"warning: ImageNet VGG16 weights are unavailable, so the perceptual group uses a randomly initialised "
              f"(seeded) VGG16 instead; this quick-preset fallback is named in the report. ({reason})", file=sys.stderr)
        return "random", reason


def parse_group(name: str) -> dict:
    """A group name (loss[+noise=SIGMA][+l1=LAMBDA]) as {"loss", "noise", "l1"}; ae.group_name is its inverse."""
    loss, *parts = name.split("+")
    settings = {"loss": loss, "noise": 0.0, "l1": 0.0}
    try:
        if loss not in ae.LOSSES:
            raise ValueError
        for part in parts:
            key, value = part.split("=")
            if key not in ("noise", "l1") or float(value) < 0 or not math.isfinite(float(value)):
                raise ValueError
            settings[key] = float(value)
    except ValueError:
        raise UserError(f"cannot read the loss group {name!r}; write a loss ({', '.join(ae.LOSSES)}) with optional "
                        f"+noise=SIGMA and +l1=LAMBDA (both >= 0), e.g. mse+noise=0.1 or mse+l1=1e-3") from None
    return settings


def for_group(value, group: str):
    """A setting's value for one loss group: its own entry when the setting is given per group (a
    variant such as mse+noise=0.1 takes its base loss's entry unless it has its own)."""
    if not isinstance(value, dict):
        return value
    return value[group] if group in value else value[parse_group(group)["loss"]]


DATA_FLAGS = [("--dataset", "dataset"), ("--synthetic-size", "synthetic_size"), ("--cache-dir", "cache_dir"),
              ("--data-root", "data_root"), ("--download", "download"), ("--n-train", "n_train"), ("--n-test", "n_test")]
SUBSET_FLAGS = [("--bn-images", "bn_images"), ("--train-images", "train_images"), ("--test-images", "test_images")]
# The one table of what each script's steps are given: (flag, setting). A setting given per loss group (a dict) is
# resolved for the step's group; True gives the bare flag, False or None no flag, a list its items. Besides the
# settings, a step knows its own: loss, noise, l1, seed, curve, precision (resolved for the group), vgg (the weights
# training uses) and vgg_file (the same, for the later steps, only when it is a file: checkpoints name the others).
# A new flag of a script is one row here and, if the presets set it, one entry in PRESETS.
FLAGS = {
    "train_ae": [("--loss", "loss"), ("--noise", "noise"), ("--l1", "l1"), ("--seed", "seed"), *DATA_FLAGS,
                 ("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"), ("--schedule", "schedule"),
                 ("--precision", "precision"), ("--latent-dim", "latent_dim"), ("--width", "width"), ("--vgg-weights", "vgg"),
                 ("--vgg-layers", "vgg_layers"), ("--snapshots", "snapshots"), ("--device", "device")],
    "fit_curve": [("--curve", "curve"), ("--num-bends", "num_bends"), ("--epochs", "curve_epochs"), ("--lr", "curve_lr"),
                  ("--schedule", "schedule"), ("--precision", "precision"), ("--batch-size", "batch_size"), ("--seed", "fit_seed"),
                  ("--bn-images", "bn_images"), ("--vgg-weights", "vgg_file"), ("--device", "device")],
    "eval_curve": [("--num-points", "num_points"), ("--n-train", "anchor_images"), *SUBSET_FLAGS, ("--quality-images", "quality_images"), ("--estimator", "estimator"), ("--aligned", "aligned"),
                   ("--align", "align_if_aligned"), ("--probe", "probe"), ("--vgg-weights", "vgg_file"), ("--device", "device")],
    "plane": [("--grid", "plane_grid"), *SUBSET_FLAGS, ("--vgg-weights", "vgg_file"), ("--device", "device")],
    "ensemble": [("--k", "ensemble_k"), ("--points", "ensemble_points"), ("--select", "select"), ("--pool-points", "pool_points"),
                 ("--valid-images", "select_valid_images"), ("--fge-cycles", "fge_cycles"), ("--cycle", "fge_cycle"),
                 ("--precision", "precision"), ("--no-sse", "no_sse"), ("--bn-images", "bn_images"),
                 ("--test-images", "test_images"), ("--vgg-weights", "vgg_file"), ("--device", "device")],
    "function_space": [("--t-points", "function_space_points"), ("--bn-images", "bn_images"), ("--device", "device")],
    "simplex": [("--connectors", "simplex_connectors"), ("--epochs", "simplex_epochs"), ("--lr", "curve_lr"), ("--schedule", "schedule"),
                ("--precision", "precision"), ("--batch-size", "batch_size"), ("--seed", "fit_seed"), ("--points", "simplex_points"),
                ("--num-points", "simplex_num_points"), ("--grid", "simplex_grid"), *SUBSET_FLAGS, ("--quality-images", "quality_images"),
                ("--vgg-weights", "vgg_file"),
                ("--device", "device")],
}


def flags(script: str, s: dict, group: str, **own) -> list:
    """The flags of one step of `script` for loss `group`, from FLAGS, the settings `s` and the step's `own` values."""
    values = {**s, **parse_group(group), "fit_seed": 0, "no_sse": not s["sse"],
              "anchor_images": min((n for n in (s["anchor_images"], s["n_train"]) if n), default=None),  # within training's images
              "pool_points": s["ensemble_points"] if s["select"] else None,
              "select_valid_images": s["valid_images"] if s["select"] else None,
              "vgg_file": own["vgg"] if own.get("vgg") not in (None, "imagenet", "random") else None, **own}
    values["align_if_aligned"] = values["align"] if for_group(values["aligned"], group) else None
    argv = []
    for flag, key in FLAGS[script]:
        value = for_group(values[key], group)
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *value] if value else []
        elif value is not None and value is not False and not (key in ("noise", "l1") and not value):
            argv += [flag, value]
    return argv


def plan(s: dict, out: Path, vgg: str, on: torch.device | None = None) -> list[dict]:
    """Every step of the study in order: name, kind, the script whose main(argv) runs it, argv, output, inputs.
    `auto` precision is resolved for the device `on` (default CPU), so a step's key names what it ran."""
    steps, evals = [], []
    precision = {group: training.resolve_precision(s["precision"], on or torch.device("cpu"), parse_group(group)["loss"])
                 for group in s["groups"]}
    for loss in s["groups"]:  # a loss group's name (e.g. mse, or mse+noise=0.1): in its file names, and the key of per-group settings
        for seed in s["seeds"]:
            ckpt = out / "ae" / f"{loss}_s{seed}.pt"
            argv = [*flags("train_ae", s, loss, seed=seed, precision=precision[loss], vgg=vgg), "--out", ckpt]
            steps.append({"name": f"train {loss} seed {seed}", "kind": "train", "script": "train_ae", "argv": argv, "output": ckpt, "inputs": []})
    for loss, curve in itertools.product(s["groups"], s["curves"]):
        for i, j in itertools.combinations(s["seeds"], 2):
            a, b = out / "ae" / f"{loss}_s{i}.pt", out / "ae" / f"{loss}_s{j}.pt"
            ckpt = out / "curves" / f"{loss}_s{i}-s{j}-{curve}.pt"
            argv = ["--a", a, "--b", b, *flags("fit_curve", s, loss, curve=curve, precision=precision[loss], vgg=vgg), "--out", ckpt]
            steps.append({"name": f"fit {loss} {curve} seeds {i}-{j}", "kind": "fit", "script": "fit_curve", "argv": argv,
                          "output": ckpt, "inputs": [a, b]})
            result = ckpt.with_name(ckpt.stem + ".eval.json")
            argv = ["--ckpt", ckpt, *flags("eval_curve", s, loss, vgg=vgg), "--out", result]
            evals.append({"name": f"eval {loss} {curve} seeds {i}-{j}", "kind": "eval", "script": "eval_curve", "argv": argv,
                          "output": result, "inputs": [ckpt]})
    steps += evals
    steps += other_matcher_steps(s, evals)
    steps += variant_steps(s, out, steps, evals, vgg)
    steps += simplex_steps(s, out, precision, vgg)
    planes = plane_steps(s, out, vgg)
    steps += planes
    ensemble_losses = [g for g in s["groups"] if g in s["ensemble_losses"]] if s["ensembles"] else []  # plain groups only
    for loss, curve in itertools.product(ensemble_losses, s["curves"]):
        i, j = s["seeds"][:2]  # the first pair's curve; every seed's endpoint joins the endpoint ensembles
        ckpt = out / "curves" / f"{loss}_s{i}-s{j}-{curve}.pt"
        members = [out / "ae" / f"{loss}_s{seed}.pt" for seed in s["seeds"]]
        folder = out / "ensembles" / f"{loss}_{curve}"
        argv = ["--ckpt", ckpt, "--endpoints", *members, *flags("ensemble", s, loss, precision=precision[loss], vgg=vgg), "--out", folder]
        steps.append({"name": f"ensembles {loss} {curve}", "kind": "ensemble", "script": "ensemble", "argv": argv,
                      "output": folder / "ensemble.json", "inputs": [ckpt, *members]})
    steps += function_space_steps(s, out, steps)
    figures = out / "figures"
    steps.append({"name": "plot figures", "kind": "plot", "script": "plot", "output": figures / "index.json",
                  "argv": [*(e["output"] for e in [*evals, *planes]), "--out", figures], "inputs": [e["output"] for e in [*evals, *planes]]})
    for step in steps:
        step["argv"] = [str(x) for x in step["argv"]]
    return steps


# A second fit of each group's first pair, compared with the plain one in the report (not a pair of the verdict):
# setting -> (fit_curve flags, file suffix, what it is)
VARIANTS = {"arclength": (["--objective", "arclength"], "arclength", "arc-length objective"),
            "aligned_curves": (["--aligned"], "aligned", "curve to B aligned to A")}


def other_matcher_steps(s: dict, evals: list[dict]) -> list[dict]:
    """With `align_both` (a width sweep), each evaluation with an aligned segment again with the other --align
    method: kind 'eval-align-<method>', written beside it as <curve>.eval-<method>.json."""
    extra = []
    for step in evals if s.get("align_both") else []:
        if "--align" in step["argv"]:
            i = step["argv"].index("--align")
            for method in (m for m in cli.ALIGN_METHODS if m != step["argv"][i + 1]):
                result = Path(step["inputs"][0]).with_name(Path(step["inputs"][0]).stem + f".eval-{method}.json")
                argv = [*step["argv"][:i + 1], method, *step["argv"][i + 2:-2], "--out", result]  # argv ends --out RESULT
                extra.append({**step, "name": f"{step['name']} ({method} matching)", "kind": f"eval-align-{method}",
                              "argv": argv, "output": result})
    return extra


def variant_steps(s: dict, out: Path, steps: list[dict], evals: list[dict], vgg: str) -> list[dict]:
    """The fit and evaluation of every VARIANTS setting that is on for a group, on its first pair,
    with the plain fit's and evaluation's flags; evaluations of kind 'eval-<setting>'."""
    extra = []
    for (setting, (variant_flags, suffix, what)), loss, curve in itertools.product(VARIANTS.items(), s["groups"], s["curves"]):
        if not for_group(s[setting], loss):
            continue
        i, j = s["seeds"][:2]
        plain = next(step for step in steps if step["output"] == out / "curves" / f"{loss}_s{i}-s{j}-{curve}.pt")
        ckpt = out / "curves" / f"{loss}_s{i}-s{j}-{curve}-{suffix}.pt"
        extra_flags = [*variant_flags, "--align", s["align"]] if setting == "aligned_curves" else variant_flags
        extra.append({"name": f"fit {loss} {curve} seeds {i}-{j} ({what})", "kind": "fit", "script": "fit_curve",
                      "argv": [*plain["argv"][:-2], *extra_flags, "--out", ckpt], "output": ckpt, "inputs": plain["inputs"]})  # argv ends --out CKPT
        result = ckpt.with_name(ckpt.stem + ".eval.json")
        argv = ["--ckpt", ckpt, *flags("eval_curve", s, loss, vgg=vgg, aligned=False), "--out", result]
        extra.append({"name": f"eval {loss} {curve} seeds {i}-{j} ({what})", "kind": f"eval-{setting}", "script": "eval_curve",
                      "argv": argv, "output": result, "inputs": [ckpt]})
    return extra


def simplex_steps(s: dict, out: Path, precision: dict, vgg: str) -> list[dict]:
    """simplex.py per loss group: one complex over all its endpoints (none with --no-simplex). It needs only the
    endpoints, so a refitted curve does not refit it."""
    if not s["simplex"]:
        return []
    steps = []
    for loss in s["groups"]:
        ends = [out / "ae" / f"{loss}_s{seed}.pt" for seed in s["seeds"]]
        ckpt = out / "simplex" / f"{loss}.pt"
        argv = ["--ckpts", *ends, *flags("simplex", s, loss, precision=precision[loss], vgg=vgg), "--out", ckpt]
        steps.append({"name": f"simplex {loss}", "kind": "simplex", "script": "simplex", "argv": argv,
                      "output": ckpt.with_suffix(".json"), "inputs": ends})
    return steps


def plane_steps(s: dict, out: Path, vgg: str) -> list[dict]:
    """Figure 1 for the first pair's curve of each group: the loss in the plane of its 3 bends (none with
    --no-plane, or for curves of another number of bends, which span no plane)."""
    if not s["plane"] or s["num_bends"] != 3:
        return []
    steps = []
    for loss, curve in itertools.product(s["groups"], s["curves"]):
        i, j = s["seeds"][:2]
        ckpt = out / "curves" / f"{loss}_s{i}-s{j}-{curve}.pt"
        result = ckpt.with_name(ckpt.stem + ".plane.json")
        argv = ["--ckpt", ckpt, *flags("plane", s, loss, vgg=vgg), "--out", result]
        steps.append({"name": f"plane {loss} {curve} seeds {i}-{j}", "kind": "plane", "script": "plane", "argv": argv,
                      "output": result, "inputs": [ckpt]})
    return steps


def function_space_steps(s: dict, out: Path, steps: list[dict]) -> list[dict]:
    """function_space.py per loss group: its endpoints and their snapshots, its curves (the first curve
    type's) with their segments, and the FGE members of its ensemble step when it has one."""
    if not s["function_space"]:
        return []
    extra = []
    for loss in s["groups"]:
        ends = [out / "ae" / f"{loss}_s{seed}.pt" for seed in s["seeds"]]
        snapshots = [p.with_suffix(".snapshots") for p in ends] if for_group(s["snapshots"], loss) else []
        fits = [out / "curves" / f"{loss}_s{i}-s{j}-{s['curves'][0]}.pt" for i, j in itertools.combinations(s["seeds"], 2)]
        ensembles = [step["output"] for step in steps if step["kind"] == "ensemble" and step["output"].parent.name == f"{loss}_{s['curves'][0]}"]
        fge = [p.with_name("fge") for p in ensembles]
        folder = out / "function_space" / loss
        argv = ["--ckpts", *ends, *snapshots, *fge, "--curves", *fits, *flags("function_space", s, loss), "--out", folder]
        extra.append({"name": f"function space {loss}", "kind": "function_space", "script": "function_space", "argv": argv,
                      "output": folder / "function_space.json", "inputs": [*ends, *fits, *ensembles]})
    return extra


def step_key(step: dict) -> str:
    """What the step's output depends on: its settings and the bytes of its input files."""
    inputs = [file_sha256(p) if Path(p).exists() else "missing" for p in step["inputs"]]
    text = json.dumps({"argv": step["argv"], "inputs": inputs})
    return hashlib.sha256(text.encode()).hexdigest()


def finished_steps(record_path: Path) -> dict:
    """The steps an earlier run of this study finished, from its study.json (none if unreadable)."""
    if not record_path.exists():
        return {}
    try:
        done = json.loads(record_path.read_text()).get("done", {})
        return done if isinstance(done, dict) else {}
    except (OSError, ValueError, AttributeError):
        print(f"warning: {record_path} is unreadable; every step will be redone", file=sys.stderr)
        return {}


def fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def dependencies(steps: list[dict]) -> list[set[int]]:
    """For each step, the steps whose output is among its inputs (the plan lists it after them)."""
    made_by = {str(step["output"]): n for n, step in enumerate(steps)}
    return [{made_by[str(p)] for p in step["inputs"] if str(p) in made_by} for step in steps]


def up_to_date(step: dict, key: str, done: dict, ran: set[str]) -> bool:
    """Whether a step is skipped: an earlier run finished it with this key, its output is there, and
    no step of this run remade one of its inputs. The one rule of both executors."""
    record = done.get(str(step["output"]))
    return (isinstance(record, dict) and record.get("key") == key and Path(step["output"]).exists()
            and not any(str(p) in ran for p in step["inputs"]))


def time_left(kinds: list[str], spent: dict[str, list[float]], slots: int) -> float | None:
    """Seconds left, roughly: each unsettled step's kind at its mean time so far (a kind not yet run at
    the mean of all), shared among the executor's parallel slots; None before any step has run."""
    known = [t for times in spent.values() for t in times]
    return sum(np.mean(spent.get(kind, known)) for kind in kinds) / slots if known else None


def progress(k: int, total: int, name: str, start: float, left: float | None, took: float | None = None) -> str:
    """One progress line: `[k/total] name  (elapsed …, [took …, ]about … left)`."""
    return (f"[{k}/{total}] {name}  (elapsed {fmt_time(time.time() - start)}" + (f", took {fmt_time(took)}" if took is not None else "")
            + (f", about {fmt_time(left)} left)" if left is not None else ")"))


def run_steps(steps: list[dict], record: dict, record_path: Path, pool) -> None:
    """Each step, in plan order, once the steps it depends on are settled: skipped when up to date,
    else run on `pool`, and study.json rewritten after each that finishes. A failure stops a serial
    pool at once; on a parallel one it stops only its dependants, and the study fails at the end."""
    needs, total = dependencies(steps), len(steps)
    state, entries, keys, root = {}, {}, {}, {}  # step -> done/skipped/failed/not run; its record entry; its key; the failed step it waited for
    running, ran, spent, start = set(), set(), {}, time.time()

    def left() -> float | None:
        return time_left([s["kind"] for m, s in enumerate(steps) if m not in state], spent, pool.slots)

    def settle(n: int, status: str, **entry) -> None:
        state[n] = status
        entries[n] = {"name": steps[n]["name"], "kind": steps[n]["kind"], "output": str(steps[n]["output"]), **entry}
        record["steps"] = [entries[m] for m in sorted(entries)]  # in plan order, whatever order they finished in

    while len(state) < total:
        for n, step in enumerate(steps):
            if not pool.free():
                break
            if n in state or n in running or not needs[n] <= state.keys():
                continue
            failed = [m for m in sorted(needs[n]) if state[m] in ("failed", "not run")]
            if failed:
                root[n] = root.get(failed[0], steps[failed[0]]["name"])
                state[n] = "not run"
                print(f"[{len(state)}/{total}] {step['name']}: not run: depends on failed step '{root[n]}'", flush=True)
                continue
            keys[n] = step_key(step)
            if up_to_date(step, keys[n], record["done"], ran):
                settle(n, "skipped", seconds=record["done"][str(step["output"])].get("seconds"), skipped=True)
                print(f"[{len(state)}/{total}] {step['name']}: up to date, skipped")
                continue
            if pool.serial:  # announced as it starts; a parallel pool's steps are announced as they finish
                print("\n" + progress(len(state) + 1, total, step["name"], start, left()), flush=True)
            pool.submit(n, step)
            running.add(n)
        if not running:
            break
        n, seconds, error = pool.wait()
        running.discard(n)
        step = steps[n]
        if error is not None:
            settle(n, "failed", failed=error)
            write_json(record_path, record)
            if pool.serial:
                raise UserError(f"study stopped at step {len(state)}/{total} '{step['name']}': {error}; finished steps are kept, "
                                f"fix the cause and rerun the same command to continue")
            print(f"[{len(state)}/{total}] {step['name']}: FAILED: {error}", flush=True)
            continue
        ran.add(str(step["output"]))
        spent.setdefault(step["kind"], []).append(seconds)
        record["done"][str(step["output"])] = {"key": keys[n], "seconds": seconds}
        settle(n, "done", seconds=seconds, skipped=False)
        write_json(record_path, record)
        if not pool.serial:
            print(progress(len(state), total, step["name"], start, left(), took=seconds), flush=True)
    failed = [n for n in sorted(state) if state[n] == "failed"]
    if failed:
        names = "; ".join(f"'{steps[n]['name']}': {entries[n]['failed']}" for n in failed)
        raise UserError(f"{len(failed)} step(s) failed ({names}) and the {list(state.values()).count('not run')} step(s) that depend on "
                        f"them were not run; finished steps are kept, fix the cause and rerun the same command to continue")


def check_executor_flags(args: argparse.Namespace) -> None:
    """The Ray flags only with --executor ray, and --ray-cpus only for a local instance."""
    if args.executor != "ray" and (args.ray_address or args.ray_cpus):
        raise UserError("--ray-address and --ray-cpus are for --executor ray; add it or drop them")
    if args.ray_address and args.ray_cpus:
        raise UserError("--ray-cpus sizes the local Ray instance this run starts; a cluster joined with --ray-address has its own CPUs")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    settings = resolve_settings(args)
    check_executor_flags(args)
    device = cli.pick_device(args.device)
    with folder_lock(args.out):  # before any data is loaded: a second run on the same folder stops here
        with executors.open_pool(args.executor, args.threads_per_step, device.type == "cuda", args.ray_address, args.ray_cpus) as pool:
            return run_widths(args, settings, device, pool) if settings["widths"] else run(args, settings, device, pool)


# What a width sweep runs at each width: endpoints, curves, and their evaluations with the aligned segment by each matcher
WIDTH_SWEEP = {"plane": False, "function_space": False, "ensembles": False, "simplex": False, "arclength": False,
               "aligned_curves": False, "probe": False, "aligned": True, "align_both": True, "widths": None, "width_epochs": {}}


def run_widths(args: argparse.Namespace, settings: dict, device: torch.device, pool) -> Path:
    """--widths: at each width a study of its own in <out>/width<W> (WIDTH_SWEEP's steps, cached like any study's, so
    that adding a width runs only its steps), then the sweep's report of all of them (report.write_width_report)."""
    out = Path(args.out)
    folders = [run(argparse.Namespace(**{**vars(args), "out": str(out / f"width{width}"), "report": None}),
                   {**settings, **WIDTH_SWEEP, "width": width, "epochs": settings["width_epochs"].get(width, settings["epochs"])},
                   device, pool).parent for width in settings["widths"]]
    path = report.write_width_report(out, folders, Path(args.report) if args.report else out / "report.md")
    print(f"\nwidth sweep complete: read {path}")
    return path


def run(args: argparse.Namespace, settings: dict, device: torch.device, pool) -> Path:
    """Every step of the study on the executor's `pool`, skipping those that are up to date, then the report
    (written here, by the driver, and only when every step is done)."""
    out = Path(args.out)
    record_path = out / "study.json"
    previous = {} if args.force else finished_steps(record_path)
    data_cfg = data.data_config(argparse.Namespace(**{k: settings.get(k) for k in data.DEFAULTS}))
    sizes = {split: len(data.load_split(data_cfg, split)) for split in ("train", "test")}  # also fills the cache once
    ensure_dir(out)
    vgg, fallback = choose_vgg_weights(settings)
    steps = plan(settings, out, vgg, device)
    record = {"format": STUDY_FORMAT, "preset": args.preset, "settings": settings, "vgg_weights": vgg, "vgg_fallback": fallback,
              "device": str(device), "executor": args.executor, "threads_per_step": args.threads_per_step,
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "numpy": np.__version__},
              "dataset": data_cfg, "n_train_images": sizes["train"], "n_test_images": sizes["test"],
              "plan": [{"kind": step["kind"], "output": Path(step["output"]).relative_to(out).as_posix()} for step in steps],  # what the report reads
              "steps": [], "done": dict(previous)}
    start = time.time()
    run_steps(steps, record, record_path, pool)
    report_path = Path(args.report) if args.report else out / "report.md"
    record["total_seconds"] = time.time() - start
    write_json(record_path, record)
    report.write_report(out, report_path)
    print(f"\nstudy complete in {fmt_time(time.time() - start)}: read {report_path}")
    return report_path


if __name__ == "__main__":
    cli.run(main)
