"""Evaluate a fitted curve against the straight segment: `python eval_curve.py --num_points 61`.

For each of num_points values of t in [0, 1], on the curve and on the segment between the same
endpoints (with --aligned also on the segment to B permuted to match A, align.py): BatchNorm
statistics recomputed at t, then train and test loss (the group's loss, and MSE) as mean +-
standard error, image quality of the first --quality-images test images (PSNR, SSIM and, when VGG16's ImageNet
weights can be had, LPIPS), and the weight-space length element. The default estimator evaluates a few
anchors (the ends and --anchors) on every image of both splits and, at every other t, a fixed
subset whose mean it corrects with the anchors' per-image losses as control variates. Writes an
evaluation JSON (per-t values and per-path summaries with barrier heights), an npz of
reconstructions of fixed test images at every t, and PNG grids (rows = images, columns = t), one per path.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import ae
import data
from lib import cli, training
from lib.training import (ANCHORS, CURVE_DIR, ESTIMATORS, EVAL_NOISE_SEED, EVAL_SUBSETS, NEAR_ZERO, add_subset_args,
                          anchor_values, convergence, evaluate_path, newest_curve, segment_of, target_features)
from lib.files import EVAL_FORMAT, UserError, atomic_write, ensure_dir, file_sha256, load_curve, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--ckpt", default=None, help=f"curve checkpoint (default: the newest .pt in {CURVE_DIR}, the one fit_curve.py wrote last)")
    p.add_argument("--num_points", "--num-points", dest="num_points", type=cli.at_least_two, default=61,
                   help="number of evenly spaced t in [0, 1]")
    p.add_argument("--images", type=cli.positive_int, default=4, help="fixed test images reconstructed along each path")
    p.add_argument("--columns", type=cli.at_least_two, default=None,
                   help="values of t shown in the reconstruction grids (default: 7, or num_points if fewer)")
    add_subset_args(p, "each t (default: 250 on the synthetic faces, 1000 on images from files)", dict.fromkeys(EVAL_SUBSETS))
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
                   help="also evaluate the aligned segment: from A to B with B's units permuted to match A's (lib/align.py)")
    p.add_argument("--align", default=cli.ALIGN_METHODS[0], choices=cli.ALIGN_METHODS,
                   help="--aligned: match B's units to A's by the correlation of their activations on the --bn-images training "
                        "images, or by their weights")
    p.add_argument("--probe", action="store_true",
                   help="also fit linear probes of the 128-d code to the images' attributes at --probe-t on every path (synthetic "
                        "faces: their generator's attributes; CelebA: list_attr_celeba; folders: none, skipped with a note), and "
                        "the linear CKA of the code at t with the codes at the ends")
    p.add_argument("--probe-t", type=cli.unit_float, nargs="+", default=None, metavar="T",
                   help="values of t probed (default: those of the reconstruction grids' columns)")
    p.add_argument("--probe-train-images", type=cli.positive_int, default=2000,
                   help="training images whose codes fit each probe (scored on the --test-images test images)")
    p.add_argument("--quality-images", type=cli.nonnegative_int, default=250,
                   help="test images (the first of --test-images) whose reconstructions' PSNR, SSIM and LPIPS are measured at each t "
                        "(SSIM costs about one forward pass per image); 0: none")
    p.add_argument("--lpips", default="auto", metavar="WEIGHTS",
                   help="VGG16 weights of LPIPS-VGG (its calibrated linear layers ship with torchmetrics): auto (the perceptual "
                        "loss's own, else ImageNet's if torch's cache has them; else no LPIPS, and the JSON says why), imagenet (the "
                        "cache or a download), a state-dict file, random (an uncalibrated backbone, recorded as lpips_uncalibrated), or none")
    p.add_argument("--vgg-weights", default=None, help="perceptual group only: the VGG16 weight file, when the endpoints used one")
    training.add_precision_arg(p, default="fp32")
    data.add_data_args(p, inherit=True)
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help="evaluation JSON (default: beside the curve, <curve>.eval.json); npz and PNGs go beside it")
    return p.parse_args(argv)


def fit_record(ckpt: dict) -> dict | None:
    """The fit's settings, its per-epoch history and whether it converged, for the plot and the report."""
    history = ckpt.get("history")
    if not history:
        return None
    config = ckpt["config"]
    return {"epochs": config.get("epochs"), "schedule": config.get("schedule", "constant"), "lr": config.get("lr"),
            "history": history, **convergence(history)}


def save_grid(path: Path, recon: torch.Tensor) -> None:
    """PNG grid of reconstructions [columns, images, 3, H, W]: one row per image, one column per t."""
    from torchvision.utils import make_grid, save_image  # here: importing torchvision takes 1.5 s

    grid = make_grid(recon.transpose(0, 1).reshape(-1, *recon.shape[2:]), nrow=recon.shape[0], padding=2, pad_value=1.0)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def print_table(result: dict) -> None:
    print(f"\n{result['curve']} curve vs segment, {result['group']} loss ({Path(result['curve_ckpt']).name}):")
    width, summaries = max(8, *map(len, result["paths"])), {path: r["summary"] for path, r in result["paths"].items()}
    names = [n for n in ("train_loss", "test_loss", "test_psnr", "test_ssim", "test_lpips", "test_lpips_uncalibrated")
             if n in next(iter(summaries.values()))]  # losses, then the image quality of the first --quality-images test images
    print(f"{'path':{width}} {'metric':10} {'t=0':>9} {'t=1':>9} {'min':>9} {'max':>9} {'mean':>9} {'barrier':>9} {'rel':>7}")
    for path, summary in summaries.items():
        for name in names:
            s = summary[name]
            print(f"{path:{width}} {name:10} {s['start']:9.5f} {s['end']:9.5f} {s['min']:9.5f} {s['max']:9.5f} {s['mean']:9.5f} "
                  f"{s['barrier']:9.5f} {100 * s['barrier_rel']:6.1f}%")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    ckpt_path = Path(args.ckpt) if args.ckpt else newest_curve()
    if not args.ckpt:
        print(f"evaluating {ckpt_path} (newest curve in {CURVE_DIR}; pass --ckpt to choose)")
    net, ckpt = load_curve(ckpt_path)
    config = ckpt["config"]
    args.columns = min(7, args.num_points) if args.columns is None else args.columns
    if args.columns > args.num_points:
        raise UserError(f"--columns {args.columns} exceeds --num_points {args.num_points}; lower --columns")
    out = Path(args.out) if args.out else ckpt_path.with_name(ckpt_path.stem + ".eval.json")
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    ensure_dir(out.parent)
    data_cfg = data.data_config(args, base=config["data"])
    training.fill_subsets(args, data_cfg["dataset"])
    train_images, test_images = (data.load_split(data_cfg, split) for split in ("train", "test"))
    loss_fn = training.objective_from_config(config, args.vgg_weights, device)  # the loss the curve was fitted with
    # Fixed subsets: the first images of each split (splits are already in a fixed random order).
    split_images = {"train": train_images[: args.train_images], "test": test_images[: args.test_images]}
    bn_images = train_images[: args.bn_images]
    shown_u8 = test_images[: args.images]
    shown = shown_u8.to(device).float().div(255).contiguous(memory_format=torch.channels_last)
    ts = np.linspace(0.0, 1.0, args.num_points).tolist()
    columns = sorted({int(round(i * (args.num_points - 1) / (args.columns - 1))) for i in range(args.columns)})

    precision = training.resolve_precision(args.precision, device, config["loss"])
    try:
        lpips, lpips_record = cli.optional("vgg", "--lpips").lpips_metric(
            args.lpips if args.quality_images else "none", args.vgg_weights or config.get("vgg_weights"), device)
    except UserError as e:
        if args.lpips != "auto":
            raise
        lpips, lpips_record = None, {"metric": None, "reason": str(e)}
    quality = training.Quality(args.quality_images, lpips, lpips_record["metric"] or "lpips") if args.quality_images else None
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
                           "quality_images": min(args.quality_images, len(split_images["test"])),
                           "estimator": args.estimator, "anchors": anchor_ts,
                           "population": {"train": len(train_images), "test": len(test_images)},
                           "precision": precision, "eval_noise_seed": EVAL_NOISE_SEED,
                           **({"near_zero": NEAR_ZERO} if loss_fn.l1 else {})},
              "lpips": lpips_record, "t": ts, "columns_t": [ts[i] for i in columns], "fit": fit_record(ckpt), "paths": {}}
    recon = {}
    paths = {"curve": net, "segment": segment_of(net)}
    if args.aligned:
        paths["aligned_segment"] = cli.optional("align", "--aligned").aligned_segment(
            net, method=args.align, images=bn_images, noise=loss_fn.noise, batch_size=args.eval_batch_size, device=device)
        result["alignment"] = paths["aligned_segment"].alignment
    if args.probe:
        result["probe"] = cli.optional("probe", "--probe").run_probes(args, data_cfg, paths, train_images, test_images, bn_images,
                                                                       ts, columns, device, loss_fn.noise)
    paths = {name: path_net.to(device, memory_format=torch.channels_last) for name, path_net in paths.items()}
    anchors = anchor_values(paths, anchor_ts, {"train": train_images, "test": test_images}, loss_fn, bn_images=bn_images,
                            batch_size=args.eval_batch_size, device=device, precision=precision, quality=quality) if anchor_ts else {}
    features = target_features(loss_fn, split_images, args.eval_batch_size, device)  # after the anchors': one set in memory at a time
    for name, path_net in paths.items():
        result["paths"][name], recon[name] = evaluate_path(
            path_net, ts, split_images, loss_fn, bn_images=bn_images, shown=shown, columns=range(len(ts)),
            batch_size=args.eval_batch_size, device=device, desc=f"{name} ({args.num_points} points)", features=features,
            precision=precision, anchors=anchors.get(name), quality=quality)
    result["seconds"] = time.time() - t0

    to_u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    npz, grids = out.with_name(f"{stem}.npz"), {name: out.with_name(f"{stem}.{name}.png") for name in paths}
    atomic_write(npz, lambda f: np.savez_compressed(f, t=np.asarray(ts), columns=np.asarray(columns), originals=shown_u8.numpy(),
                                                    **{name: to_u8(images) for name, images in recon.items()}))
    for name, png in grids.items():
        save_grid(png, recon[name][columns])
    result["files"] = {"npz": npz.name, **{f"{name}_png": png.name for name, png in grids.items()},
                       "points": [cli.optional("snapshots", "--save-t").save_point(net, t, out.with_name(f"{stem}.t{t:.3f}.pt"), config,
                                                                                    bn_images, args.eval_batch_size, device, loss_fn).name
                                  for t in args.save_t]}
    write_json(out, result)  # last: its presence means the evaluation and its images are complete
    print_table(result)
    if result.get("probe"):
        cli.optional("probe", "--probe").print_probes(result["probe"])
    print(f"\nwrote {out}, {npz.name}, {', '.join(png.name for png in grids.values())} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    cli.run(main)
