"""Speed benchmarks, every comparison measured side by side in this one run: `python bench.py`.

Prints a table (each figure a median over repeats, with its target and whether it is met) and
writes it as JSON. `--study` also times `run_study.py --preset quick`, which takes minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import ae
from lib import cli
import curves
import data
import eval_curve
import fit_curve
import plane
from lib import images as image_files, training, vgg
from lib.files import UserError, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--repeats", type=cli.positive_int, default=9, help="timed repeats per figure (the median is reported)")
    p.add_argument("--batch-size", type=cli.positive_int, default=128, help="images per training step in the timed steps")
    p.add_argument("--width", type=cli.positive_int, default=32, help="autoencoder width (32 is the default AutoEncoder)")
    p.add_argument("--eval-train", type=cli.positive_int, default=20000, help="synthetic training images for the evaluation benchmark")
    p.add_argument("--eval-points", type=cli.positive_int, default=5,
                   help="values of t per path in the evaluation benchmark, evenly from 0.1 to 0.9 (the exhaustive evaluation is slow)")
    p.add_argument("--study", action="store_true", help="also time run_study.py --preset quick (minutes)")
    p.add_argument("--only", choices=["eval", "quality"], default=None,
                   help="only figure 3 (the evaluation against the exhaustive one, and its subset sizes) or figure 7 (what image "
                        "quality costs an evaluated point), with their own endpoints and curve: minutes")
    p.add_argument("--eval-sizes", type=cli.positive_int, nargs="*", default=[500, 250], metavar="N",
                   help="figure 3 also runs the default evaluation with BatchNorm, train and test subsets of each N images (its "
                        "anchors too), for its speed-up and its largest error against the exhaustive values")
    p.add_argument("--no-compile", action="store_true", help="skip figure 2's torch.compile variants (their compilation takes minutes on 2 cores)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a figure misses its target (after printing and writing all)")
    cli.add_device_arg(p)
    p.add_argument("--cache-dir", default="data/cache", help="where the synthetic faces are cached")
    p.add_argument("--out", default="runs/bench.json", help="JSON file of every figure measured")
    return p.parse_args(argv)


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(model, loss_fn, optimizer, x, precision="fp32", loss_kwargs: dict | None = None, **kwargs):
    """One optimisation step, as training.train_epoch takes it (`loss_kwargs`: e.g. cached target features)."""
    def step():
        _, loss = training.forward_loss(model, x, loss_fn, precision, x.device, kwargs, **(loss_kwargs or {}))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def batch(n: int, device, memory_format=torch.channels_last) -> torch.Tensor:
    return next(data.batches(data.synthetic_faces(0, n), n, device=device, memory_format=memory_format))


def alternated(steps: list, repeats: int) -> list[list[float]]:
    """Times of each step, called in turn (a, b, ..., a, b, ...) so that drift in the machine's speed hits all alike;
    the first round is a warm-up."""
    times = [[] for _ in steps]
    for _ in range(repeats + 1):
        for i, step in enumerate(steps):
            times[i].append(median_seconds(step, 1, warmup=0))
    return [t[1:] for t in times]


def bench_curve_overhead(args, device) -> dict:
    """1. One step of the plain AutoEncoder vs one step of its 3-bend curve network, timed in
    alternation (plain, curve, plain, ...) so that drift in the machine's speed hits both alike."""
    x = batch(args.batch_size, device)
    torch.manual_seed(0)
    plain = ae.AutoEncoder(width=args.width).to(device, memory_format=torch.channels_last)
    net = curves.CurveNet(plain, "bezier", 3).to(device, memory_format=torch.channels_last)
    steps = [train_step(plain, ae.mse, torch.optim.Adam(plain.parameters()), x),
             train_step(net, ae.mse, torch.optim.Adam(net.free_parameters()), x)]
    plain_times, curve_times = alternated(steps, args.repeats)
    t_plain, t_curve = statistics.median(plain_times), statistics.median(curve_times)
    ratio = statistics.median(c / p for p, c in zip(plain_times, curve_times))
    return {"plain_step_s": t_plain, "curve_step_s": t_curve, "ratio": ratio, "target": "<= 1.10", "met": ratio <= 1.10}


def dense_kernels(device, dtype=torch.float32, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a few dense kernels in `dtype`, the ceiling a training step of that precision is held against: square
    and rectangular GEMMs (cuBLAS/oneDNN's best case) and a large 3x3 convolution in channels_last."""
    rates = {}
    for m, k, n in ((2048, 2048, 2048), (4096, 1024, 4096), (8192, 512, 1024)):
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        rates[f"gemm {m}x{k}x{n}"] = 2 * m * k * n / median_seconds(lambda: a @ b, repeats)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last)
    x = torch.randn(32, 128, 32, 32, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        rates["conv3x3 128->128, 32x32, batch 32, channels_last"] = 2 * 32 * 128 * 32 * 32 * 128 * 9 / median_seconds(lambda: conv(x), repeats)
    return rates


# The training-step variants of figure 2: (name, precision, memory format, torch.compile'd)
STEP_VARIANTS = [("fp32 contiguous", "fp32", torch.contiguous_format, False), ("fp32 channels_last", "fp32", torch.channels_last, False),
                 ("bf16 channels_last", "bf16", torch.channels_last, False),
                 ("fp32 channels_last, compiled", "fp32", torch.channels_last, True),
                 ("bf16 channels_last, compiled", "bf16", torch.channels_last, True)]


def bench_efficiency(args, device) -> dict:
    """2. FLOP/s of an MSE training step against the best dense kernel of the same precision measured in the same run
    (fp32 and bf16), for each of STEP_VARIANTS timed in alternation: contiguous vs channels_last, fp32 vs bf16
    autocast, eager vs torch.compile (its compilation timed apart; a variant that fails to compile is reported so)."""
    kernels = {dtype: dense_kernels(device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    best = {name: max(rates, key=rates.get) for name, rates in (("fp32", kernels[torch.float32]), ("bf16", kernels[torch.bfloat16]))}
    rate = {"fp32": kernels[torch.float32][best["fp32"]], "bf16": kernels[torch.bfloat16][best["bf16"]]}
    out = {"kernels_gflops": {f"{p} {name}": r / 1e9 for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
                              for name, r in kernels[d].items()},
           "best_kernel": best["fp32"], "best_kernel_gflops": rate["fp32"] / 1e9,
           "best_bf16_kernel": best["bf16"], "best_bf16_kernel_gflops": rate["bf16"] / 1e9,
           "matmul_gflops": kernels[torch.float32]["gemm 2048x2048x2048"] / 1e9, "variants": {}}
    steps, names = [], []
    for name, precision, fmt, compiled in STEP_VARIANTS:
        if compiled and args.no_compile:
            continue
        torch.manual_seed(0)
        model = ae.AutoEncoder(width=args.width).to(device, memory_format=fmt)
        x = batch(args.batch_size, device, fmt)
        step = train_step(model, ae.mse, torch.optim.Adam(model.parameters()), x, precision)
        with FlopCounterMode(display=False) as counter:
            step()
        record = {"precision": precision, "compiled": compiled, "gflop_per_step": counter.get_total_flops() / 1e9}
        if compiled:
            step = train_step(torch.compile(model), ae.mse, torch.optim.Adam(model.parameters()), x, precision)
            start = time.perf_counter()
            try:
                step()
                step()  # the backward graph may compile on the second call
            except Exception as e:  # e.g. no C++ compiler for inductor's CPU kernels
                out["variants"][name] = {**record, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                continue
            record["compile_s"] = time.perf_counter() - start
        out["variants"][name] = record
        steps.append(step)
        names.append(name)
    for name, times in zip(names, alternated(steps, args.repeats)):
        v = out["variants"][name]
        v.update(step_s=statistics.median(times), gflops=v["gflop_per_step"] / statistics.median(times))
        v["fraction_of_kernel"] = v["gflops"] * 1e9 / rate[v["precision"]]
    timed = {n: v for n, v in out["variants"].items() if "step_s" in v}
    out["contiguous"], out["channels_last"] = timed["fp32 contiguous"], timed["fp32 channels_last"]
    out["channels_last_speedup"] = out["contiguous"]["step_s"] / out["channels_last"]["step_s"]
    out["fastest"] = min(timed, key=lambda n: timed[n]["step_s"])
    out["best_fraction"] = max(v["fraction_of_kernel"] for v in timed.values() if v["precision"] == "fp32")
    out["best_bf16_fraction"] = max(v["fraction_of_kernel"] for v in timed.values() if v["precision"] == "bf16")
    out.update(target=">= 0.70 of the best fp32 dense kernel, in fp32", met=out["best_fraction"] >= 0.70)
    return out


def trained_endpoint(images: torch.Tensor, seed: int, args, device, epochs: int = 3) -> ae.AutoEncoder:
    """An endpoint trained for a few epochs under the ref schedule, so that the segment between two has a real
    barrier and the losses along a path are those of real models."""
    torch.manual_seed(seed)
    model = ae.AutoEncoder(width=args.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    per_epoch = training.steps_per_epoch(len(images), args.batch_size)
    step = training.Step(training.Objective(ae.mse), optimizer, device, args.batch_size,
                         lr_at=training.schedule_rates("ref", 3e-3, per_epoch * epochs))
    for epoch in range(epochs):
        training.train_epoch(model, images, step, generator=training.epoch_generator(seed, epoch), epoch=epoch)
    return model


def fitted_curve(a: ae.AutoEncoder, b: ae.AutoEncoder, images: torch.Tensor, args, device, epochs: int = 2) -> curves.CurveNet:
    """A Bezier curve between a and b fitted as fit_curve.py fits it (one t ~ U(0, 1) per batch), for a few epochs."""
    net = fit_curve.build_curve(a, b, "bezier", 3).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.free_parameters(), lr=3e-3)
    per_epoch = training.steps_per_epoch(len(images), args.batch_size)
    step = training.Step(training.Objective(ae.mse), optimizer, device, args.batch_size, t_of=lambda _, u: u,
                         lr_at=training.schedule_rates("ref", 3e-3, per_epoch * epochs))
    for epoch in range(epochs):
        training.train_epoch(net, images, step, generator=training.epoch_generator(0, epoch), epoch=epoch)
    return net


def exhaustive_point(net, t, train, test, device) -> dict:
    """The reference code's evaluation of one point: BatchNorm statistics and loss over the whole
    training set (batches of 128, as its loaders give them), then the whole test set."""
    training.recompute_bn(net, train, 0.0, batch_size=128, device=device, t=t)
    return {split: training.evaluate(net, images, ae.mse, batch_size=128, device=device, t=t)["loss"]
            for split, images in (("train", train), ("test", test))}


def eval_setup(args, device) -> tuple[torch.Tensor, torch.Tensor, curves.CurveNet]:
    """--eval-train synthetic faces (train and test splits) and a curve fitted between two trained endpoints."""
    config = data.data_config(argparse.Namespace(synthetic_size=args.eval_train, cache_dir=args.cache_dir))
    train, test = data.load_split(config, "train"), data.load_split(config, "test")
    fit_images = train[:4096]
    net = fitted_curve(trained_endpoint(fit_images, 1, args, device), trained_endpoint(fit_images, 2, args, device), fit_images, args, device)
    return train, test, net


def bench_eval(args, device, setup: tuple) -> dict:
    """3. eval_curve's default evaluation (control variates) vs the exhaustive one (BatchNorm and loss on every
    image), at --eval-points values of t on the curve and on the segment, the segment's middle among them.

    Both are timed for a whole default evaluation, --num_points 61 on both paths: the exhaustive one at the
    mean time of its points here; the default one as its anchors (timed) plus every other point at the mean
    time of the non-anchor points here. Also: the error of the test loss at the segment's middle against the
    number of images its BatchNorm statistics come from (all training images: no error)."""
    train, test, net = setup
    paths = {"curve": net, "segment": training.segment_of(net).to(device, memory_format=torch.channels_last)}
    d = eval_curve.parse_args([])
    training.fill_subsets(d, "synthetic")  # the benchmark's images are synthetic faces
    anchor_ts = sorted({0.0, 1.0, *d.anchors})
    ts = np.linspace(0.1, 0.9, args.eval_points).tolist()
    subsets, bn = {"train": train[: d.train_images], "test": test[: d.test_images]}, train[: d.bn_images]
    start = time.perf_counter()
    anchors = training.anchor_values(paths, anchor_ts, {"train": train, "test": test}, ae.mse, bn_images=bn,
                                       batch_size=d.eval_batch_size, device=device)
    anchor_s = time.perf_counter() - start
    fast, spent = {}, 0.0
    for name, path in paths.items():
        start = time.perf_counter()
        fast[name], _ = training.evaluate_path(path, ts, subsets, ae.mse, bn_images=bn, shown=batch(1, device), columns=[],
                                                 batch_size=d.eval_batch_size, device=device, desc=f"default eval, {name}",
                                                 anchors=anchors[name])
        spent += time.perf_counter() - start
    timed = sum(training.anchor_at(anchor_ts, t) is None for t in ts) * len(paths)
    start, slow = time.perf_counter(), {(name, t): exhaustive_point(path, t, train, test, device) for name, path in paths.items() for t in ts}
    exhaustive_s = (time.perf_counter() - start) / len(slow)
    grid = np.linspace(0.0, 1.0, d.num_points)
    off_anchor = sum(training.anchor_at(anchor_ts, t) is None for t in grid) * len(paths)
    default_total, exhaustive_total = anchor_s + off_anchor * spent / timed, len(grid) * len(paths) * exhaustive_s
    points = []
    for (name, t), exact in slow.items():
        i = ts.index(t)
        points.append({"path": name, "t": t, "estimator": fast[name]["estimator"][i],
                       **{f"{split}_error": fast[name][f"{split}_loss"][i] / exact[split] - 1 for split in ("train", "test")},
                       **{f"{split}_se_subset_rel": fast[name][f"{split}_loss_se_subset"][i] / exact[split] for split in ("train", "test")},
                       **{f"{split}_r2": fast[name][f"{split}_loss_r2"][i] for split in ("train", "test")},
                       "exhaustive": exact})
    errors = {split: max(abs(p[f"{split}_error"]) for p in points) for split in ("train", "test")}
    middle = paths["segment"]
    bn_error = {}
    for n in (125, 250, 500, 1000, 2000, 4000):
        training.recompute_bn(middle, train[:n], 0.0, batch_size=128, device=device, t=0.5)
        loss = training.evaluate(middle, test, ae.mse, batch_size=128, device=device, t=0.5)["loss"]
        bn_error[n] = loss / slow[("segment", 0.5)]["test"] - 1
    speedup = exhaustive_total / default_total
    sizes = {n: subset_trial(paths, ts, anchor_ts, (train, test), n, slow, exhaustive_total, (off_anchor, timed), d, device)
             for n in args.eval_sizes}
    return {"train_images": len(train), "test_images": len(test), "points_timed": len(slow), "sizes": sizes,
            "default": {"bn": d.bn_images, "train": d.train_images, "test": d.test_images, "anchors": anchor_ts, "estimator": d.estimator},
            "anchor_s": anchor_s, "default_s_per_point": spent / timed, "exhaustive_s_per_point": exhaustive_s,
            "eval_61_points_2_paths_s": {"default": default_total, "exhaustive": exhaustive_total}, "speedup": speedup,
            "points": points, "max_rel_error": errors, "bn_images_error_segment_middle": bn_error,
            "target": ">= 20x faster, within 1% at every point", "met": speedup >= 20 and max(errors.values()) <= 0.01}


def subset_trial(paths, ts, anchor_ts, splits, n, slow, exhaustive_total, counts, d, device) -> dict:
    """The default evaluation with BatchNorm, train and test subsets of `n` images (its anchors recomputed with BatchNorm
    from the same n, image quality included as eval_curve.py measures it): its time for a whole evaluation (61 points,
    both paths, projected as in bench_eval) and its largest error and own SE against the exhaustive values."""
    (train, test), (off_anchor, timed) = splits, counts
    bn, subsets, quality = train[:n], {"train": train[:n], "test": test[:n]}, training.Quality(d.quality_images)
    start = time.perf_counter()
    anchors = training.anchor_values(paths, anchor_ts, {"train": train, "test": test}, ae.mse, bn_images=bn,
                                     batch_size=d.eval_batch_size, device=device, quality=quality)
    anchor_s, start = time.perf_counter() - start, time.perf_counter()
    errors, own = [], []
    for name, path in paths.items():
        r, _ = training.evaluate_path(path, ts, subsets, ae.mse, bn_images=bn, shown=batch(1, device), columns=[],
                                      batch_size=d.eval_batch_size, device=device, desc=f"subsets of {n}, {name}",
                                      anchors=anchors[name], quality=quality)
        for i, t in enumerate(ts):
            errors += [abs(r[f"{s}_loss"][i] / slow[(name, t)][s] - 1) for s in ("train", "test")]
            own += [r[f"{s}_loss_se_subset"][i] / slow[(name, t)][s] for s in ("train", "test")]
    per_point = (time.perf_counter() - start) / timed
    total = anchor_s + off_anchor * per_point
    return {"anchor_s": anchor_s, "s_per_point": per_point, "eval_61_points_2_paths_s": total, "speedup": exhaustive_total / total,
            "max_rel_error": max(errors), "max_se_subset_rel": max(own)}


def print_sizes(v: dict) -> None:
    """Figure 3's subset sizes: speed-up and largest error of each."""
    for n, s in v.get("sizes", {}).items():
        print(f"   subsets of {n}: {s['speedup']:.1f}x (anchors {s['anchor_s']:.0f} s, {s['s_per_point']:.2f} s a point), "
              f"max error {s['max_rel_error']:.2%}, own SE up to {s['max_se_subset_rel']:.2%}")


def bench_plane(args, device, setup: tuple, eval_point_s: float) -> dict:
    """6. One grid point of plane.py (its weights in the curve's plane, BatchNorm and losses on its default subsets)
    against one point of eval_curve.py's default evaluation."""
    train, test, net = setup
    d = plane.parse_args([])
    basis = plane.plane_basis(*(net.bend_vector(j).detach().cpu() for j in (0, 2, 1)))
    model = ae.build_model(ae.model_config(net.template)).to(device, memory_format=torch.channels_last)
    ev = {"split_images": {"train": train[: d.train_images], "test": test[: d.test_images]}, "bn_images": train[: d.bn_images],
          "loss_fn": training.as_objective(ae.mse), "batch_size": d.eval_batch_size, "device": device, "precision": "fp32", "features": None}
    points = [(0.25, 0.25), (0.5, 0.75), (0.75, -0.1)]

    def grid_point(x, y):
        plane.set_weights(model, plane.weights_at(x, y, basis).to(device))
        return plane.measure(model, ev)

    grid_point(*points[0])  # warm-up
    start = time.perf_counter()
    for x, y in points:
        grid_point(x, y)
    seconds = (time.perf_counter() - start) / len(points)
    return {"subsets": {"bn": d.bn_images, "train": d.train_images, "test": d.test_images}, "s_per_point": seconds,
            "eval_point_s": eval_point_s, "over_eval_point": seconds / eval_point_s}


def bench_quality(args, device, setup: tuple) -> dict:
    """7. What the image quality costs in eval_curve.py's default evaluation: one point off the anchors (BatchNorm, losses,
    reconstructions) with and without PSNR and SSIM of the default --quality-images test images, alternated; and one
    point with LPIPS too (a random VGG16 trunk under torchmetrics' calibrated layers: the cost of ImageNet's)."""
    train, test, net = setup
    d = eval_curve.parse_args([])
    training.fill_subsets(d, "synthetic")  # the benchmark's images are synthetic faces
    subsets, bn = {"train": train[: d.train_images], "test": test[: d.test_images]}, train[: d.bn_images]
    lpips, _ = vgg.lpips_metric("random", None, device)
    variants = {"without": None, "psnr_ssim": training.Quality(d.quality_images), "with_lpips": training.Quality(d.quality_images, lpips)}
    point = lambda quality: lambda: training.evaluate_point(net, subsets, ae.mse, bn_images=bn, batch_size=d.eval_batch_size,  # noqa: E731
                                                            device=device, t=0.3, quality=quality)
    times = dict(zip(variants, alternated([point(q) for q in variants.values()], max(3, args.repeats // 3))))
    s = {name: statistics.median(t) for name, t in times.items()}
    ratio = s["psnr_ssim"] / s["without"]
    return {"quality_images": d.quality_images, "subsets": {"bn": d.bn_images, "train": d.train_images, "test": d.test_images},
            "s_per_point": s, "psnr_ssim_over_without": ratio, "lpips_over_without": s["with_lpips"] / s["without"],
            "target": "<= 1.15", "met": ratio <= 1.15}


def bench_data(args, device, train_rate: float) -> dict:
    """4. Images per second of an epoch from the uint8 cache vs decoding JPEG files every epoch."""
    images = data.synthetic_faces(0, 4096)
    cached = median_seconds(lambda: [x.sum() for x in data.batches(images, args.batch_size, shuffle=True, device=device,
                                                                    memory_format=torch.channels_last)], args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, img in enumerate(data.synthetic_faces(0, 300)):  # CelebA-sized JPEGs
            path = Path(tmp) / f"{i:06d}.jpg"
            Image.fromarray(img.permute(1, 2, 0).numpy()).resize((178, 218)).save(path, quality=90)
            paths.append(path)
        decode = median_seconds(lambda: [image_files.decode_image(p, image_files.CELEBA_CROP) for p in paths], max(1, args.repeats // 2))
    cache_rate, jpeg_rate = len(images) / cached, len(paths) / decode
    return {"cache_images_per_s": cache_rate, "jpeg_images_per_s": jpeg_rate, "cache_over_jpeg": cache_rate / jpeg_rate,
            "training_images_per_s": train_rate, "cache_over_training": cache_rate / train_rate,
            "target": "cache >= 20x training throughput", "met": cache_rate >= 20 * train_rate}


def bench_perceptual(args, device) -> dict:
    """5. Perceptual step vs MSE step, timed in alternation. The perceptual step as training takes it: at the
    default precision (bf16 inside VGG where the hardware has it), with the targets' VGG features looked up from
    the cache train_ae.py and fit_curve.py keep when it fits in memory (training.target_feature_cache). Also,
    each alone: without the cache, in fp32, and the fp32 loss without any saving (target features with gradient,
    VGG kept to relu4_3 although relu3_3 is the last layer used, pow(2).mean for the distance)."""
    x = batch(args.batch_size // 2, device)
    out = {"precision": training.resolve_precision("auto", device, "perceptual")}
    loss = training.make_loss("perceptual", "random", device=device)
    cache = training.target_feature_cache(loss, (x * 255).round().to(torch.uint8).cpu(), batch_size=len(x), device=device,
                                          precision=out["precision"])
    cached = {"target_features": [f.to(device) for f in cache]}

    def naive(recon, target):
        full = ae.vgg16_trunk(0)[: ae.VGG_LAYERS["relu4_3"] + 1].to(device, memory_format=torch.channels_last)
        naive.full = getattr(naive, "full", full)
        feats = []
        for inp in (recon, target):
            h, f = (inp - loss.mean) / loss.std, []
            for i, layer in enumerate(naive.full):
                h = layer(h)
                if i in loss.cut:
                    f.append(h)
            feats.append(f)
        return sum((a - b).pow(2).mean() for a, b in zip(*feats)) / len(loss.cut)

    def step(fn, precision, loss_kwargs=None):
        torch.manual_seed(0)
        model = ae.AutoEncoder(width=args.width).to(device, memory_format=torch.channels_last)
        return train_step(model, fn, torch.optim.Adam(model.parameters()), x, precision, loss_kwargs)

    repeats = max(2, args.repeats // 2)
    mse_times, perceptual_times = alternated([step(ae.mse, "fp32"), step(loss, out["precision"], cached)], repeats)
    out["mse_step_s"], out["perceptual_step_s"] = statistics.median(mse_times), statistics.median(perceptual_times)
    out["perceptual_over_mse"] = statistics.median(p / m for m, p in zip(mse_times, perceptual_times))
    for name, fn, precision in (("perceptual_uncached", loss, out["precision"]), ("perceptual_fp32", loss, "fp32"),
                                ("perceptual_naive", naive, "fp32")):
        out[f"{name}_step_s"] = median_seconds(step(fn, precision), repeats)
    out["uncached_over_mse"] = out["perceptual_uncached_step_s"] / out["mse_step_s"]
    out["perceptual_fp32_over_mse"] = out["perceptual_fp32_step_s"] / out["mse_step_s"]
    out["naive_over_ours"] = out["perceptual_naive_step_s"] / out["perceptual_fp32_step_s"]
    out.update(batch_size=len(x), target="<= 8x", met=out["perceptual_over_mse"] <= 8)
    return out


def bench_study(args) -> dict:
    """7. Wall time of the quick study, per kind of step."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).with_name("run_study.py")), "--out", tmp + "/study",
                        "--cache-dir", tmp + "/cache", "--device", args.device], check=True, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - start
        steps = json.loads(Path(tmp, "study", "study.json").read_text())["steps"]
    kinds = {}
    for step in steps:
        kinds[step["kind"]] = kinds.get(step["kind"], 0.0) + step["seconds"]
    return {"total_s": total, "per_kind_s": kinds, "target": "<= 360 s on 2 CPU cores", "met": total <= 360}


def machine(device: torch.device) -> dict:
    """What no figure is to be read without: the CPU (its model, AVX-512 BF16, AMX, how much faster a VGG convolution
    and the autoencoder's training pass run in bf16 on it), the GPU, torch, and the precision `auto` resolves to here
    for each loss."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    native = {key: bool(getattr(torch.cpu, name, lambda: False)())  # torch.cpu's checks are private: missing ones count as no
              for key, name in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported"))}
    measured = device.type == "cpu" and any(native.values())
    return {"device": str(device), "cpu": names[0] if names else platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), **native,
            "cpu_bf16_speedup": training.bf16_speedup("vgg") if measured else None,
            "ae_bf16_speedup": training.bf16_speedup("autoencoder") if measured else None,
            "auto_precision": {loss: training.resolve_precision("auto", device, loss) for loss in ae.LOSSES},
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}


def machine_line(m: dict) -> str:
    """The machine in one line, printed before and after the figures."""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    speed = (f" (in bf16 a VGG convolution {m['cpu_bf16_speedup']:.2f}x as fast as fp32, the autoencoder's training pass "
             f"{m['ae_bf16_speedup']:.2f}x)") if m.get("cpu_bf16_speedup") else ""
    auto = ", ".join(f"{loss} {p}" for loss, p in m["auto_precision"].items())
    return (f"machine: {m['cpu']}, {m['cpu_threads']} threads, AVX-512 BF16 {yes(m['avx512_bf16'])}, AMX {yes(m['amx'])}{speed}; "
            f"GPU {m['gpu'] or 'none'}; auto precision: {auto}; torch {m['torch']}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.eval_points % 2 == 0:
        raise UserError(f"--eval-points must be odd, so that the segment's middle t = 0.5 is among them; got {args.eval_points}")
    device = cli.pick_device(args.device)
    torch.manual_seed(0)
    results = {"machine": machine(device)}
    print(machine_line(results["machine"]), flush=True)
    if args.only == "quality":
        results["quality"] = q = bench_quality(args, device, eval_setup(args, device))
        print(f"7. eval point with PSNR and SSIM / without: {q['psnr_ssim_over_without']:.3f} (target <= 1.15); with LPIPS too: "
              f"{q['lpips_over_without']:.2f}x; seconds per point: " + ", ".join(f"{k} {v:.3f}" for k, v in q["s_per_point"].items()))
    if args.only == "eval":
        results["eval"] = v = bench_eval(args, device, eval_setup(args, device))
        print(f"3. evaluation speedup {v['speedup']:.1f}x, max error {max(v['max_rel_error'].values()):.2%}", flush=True)
        print_points(v)
        print_sizes(v)
    if args.only:
        write_json(args.out, results)
        print(f"wrote {args.out}")
        return results
    results["curve_overhead"] = bench_curve_overhead(args, device)
    print(f"1. curve step / plain step: {results['curve_overhead']['ratio']:.3f} (target <= 1.10)", flush=True)
    results["efficiency"] = eff = bench_efficiency(args, device)
    print("2. training step: " + "; ".join(f"{n} " + (f"{v['step_s'] * 1e3:.0f} ms, {v['gflops']:.0f} GFLOP/s, {v['fraction_of_kernel']:.0%} of "
                                                    f"the {v['precision']} kernel" if "step_s" in v else v["error"])
                                         + (f" (compiled in {v['compile_s']:.0f} s)" if "compile_s" in v else "")
                                         for n, v in eff["variants"].items()), flush=True)
    print("   dense kernels: " + ", ".join(f"{k} {v:.0f}" for k, v in eff["kernels_gflops"].items()) + " GFLOP/s", flush=True)
    setup = eval_setup(args, device)
    results["eval"] = bench_eval(args, device, setup)
    print(f"3. evaluation speedup {results['eval']['speedup']:.1f}x, max error {max(results['eval']['max_rel_error'].values()):.2%}", flush=True)
    print_points(results["eval"])
    print_sizes(results["eval"])
    train_rate = args.batch_size / eff["channels_last"]["step_s"]
    results["data"] = bench_data(args, device, train_rate)
    print(f"4. cache {results['data']['cache_images_per_s']:.0f} img/s vs training {train_rate:.0f} img/s", flush=True)
    results["perceptual"] = bench_perceptual(args, device)
    print(f"5. perceptual / mse step: {results['perceptual']['perceptual_over_mse']:.1f}", flush=True)
    results["plane"] = bench_plane(args, device, setup, results["eval"]["default_s_per_point"])
    print(f"6. plane grid point: {results['plane']['s_per_point']:.2f} s", flush=True)
    results["quality"] = q = bench_quality(args, device, setup)
    print(f"7. eval point with PSNR and SSIM / without: {q['psnr_ssim_over_without']:.3f}; with LPIPS too: {q['lpips_over_without']:.2f}", flush=True)
    if args.study:
        results["study"] = bench_study(args)
    missed = [name for name, _, _, met in table_rows(results) if met is False]
    print_table(results)
    write_json(args.out, results)
    print(f"wrote {args.out}")
    if args.strict and missed:
        raise UserError(f"--strict: {len(missed)} figure(s) missed their target: {'; '.join(n.strip() for n in missed)}")
    return results


def table_rows(r: dict) -> list[tuple]:
    """(figure, measured, target, met) per printed row; met is None where there is no target."""
    e, v, d, p = r["efficiency"], r["eval"], r["data"], r["perceptual"]
    rows = [
        ("1. curve step / plain step", f"{r['curve_overhead']['ratio']:.3f}", "<= 1.10", r["curve_overhead"]["met"]),
        ("2. fp32 train step FLOP/s / best fp32 dense kernel's", f"{e['best_fraction']:.0%}", ">= 70%", e["met"]),
        (f"   best fp32 dense kernel: {e['best_kernel'].split(',')[0]}", f"{e['best_kernel_gflops']:.0f} GFLOP/s", "-", None),
        ("   bf16 train step FLOP/s / best bf16 dense kernel's", f"{e['best_bf16_fraction']:.0%}", "-", None),
        (f"   best bf16 dense kernel: {e['best_bf16_kernel'].split(',')[0]}", f"{e['best_bf16_kernel_gflops']:.0f} GFLOP/s", "-", None),
        ("   channels_last speed-up over contiguous (fp32)", f"{e['channels_last_speedup']:.2f}x", "-", None),
        *((f"   step {name}", f"{v['step_s'] * 1e3:.0f} ms" + (f", compiled in {v['compile_s']:.0f} s" if "compile_s" in v else ""), "-", None)
          if "step_s" in v else (f"   step {name}", "failed to compile", "-", None) for name, v in e["variants"].items()),
        ("   fastest step", e["fastest"], "-", None),
        ("3. default eval speed-up over exhaustive", f"{v['speedup']:.1f}x", ">= 20x", v["speedup"] >= 20),
        (f"   max relative error (train, test), {len(v['points'])} points", f"{v['max_rel_error']['train']:.2%}, {v['max_rel_error']['test']:.2%}",
         "<= 1%", max(v["max_rel_error"].values()) <= 0.01),
        (f"   segment middle, BN from {v['default']['bn']} images", f"{bn_at_default(v):+.2%}", "-", None),
        ("4. cache img/s / training img/s", f"{d['cache_over_training']:.0f}x", ">= 20x", d["met"]),
        ("   cache img/s / JPEG decode img/s", f"{d['cache_over_jpeg']:.0f}x", "-", None),
        (f"5. perceptual step (auto = {p['precision']}, cached targets) / MSE step", f"{p['perceptual_over_mse']:.1f}x", "<= 8x", p["met"]),
        (f"   perceptual step (auto = {p['precision']}, no cache) / MSE step", f"{p['uncached_over_mse']:.1f}x", "-", None),
        ("   perceptual step (fp32, no cache) / MSE step", f"{p['perceptual_fp32_over_mse']:.1f}x", "-", None),
        ("   naive perceptual / ours (fp32)", f"{p['naive_over_ours']:.2f}x", "> 1", p["naive_over_ours"] > 1),
    ]
    if "plane" in r:
        g = r["plane"]
        rows.append((f"6. plane.py grid point (subsets {g['subsets']['bn']}/{g['subsets']['train']}/{g['subsets']['test']}) / eval point",
                     f"{g['s_per_point']:.2f} s, {g['over_eval_point']:.2f}x", "-", None))
    if "quality" in r:
        q = r["quality"]
        rows.append((f"7. eval point with PSNR + SSIM of {q['quality_images']} test images / without", f"{q['psnr_ssim_over_without']:.3f}",
                     "<= 1.15", q["met"]))
        rows.append(("   eval point with LPIPS too / without", f"{q['lpips_over_without']:.2f}x", "-", None))
    if "study" in r:
        s = r["study"]
        rows.append(("8. quick study wall time", f"{s['total_s']:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in s["per_kind_s"].items()) + ")",
                     "<= 360 s", s["met"]))
    return rows


def print_points(v: dict) -> None:
    """Item 3 point by point: the error against the exhaustive evaluation, the estimator's own SE, R^2 of the controls."""
    print(f"   {'path':8} {'t':>5} {'estimator':>17} {'train err':>9} {'(own SE)':>8} {'R^2':>6} {'test err':>9} {'(own SE)':>8} {'R^2':>6}")
    for p in v["points"]:
        r2 = lambda split: "-" if p[f"{split}_r2"] is None else f"{p[f'{split}_r2']:.3f}"  # noqa: E731
        print(f"   {p['path']:8} {p['t']:5.2f} {p['estimator']:>17} {p['train_error']:+9.2%} {p['train_se_subset_rel']:8.2%} {r2('train'):>6} "
              f"{p['test_error']:+9.2%} {p['test_se_subset_rel']:8.2%} {r2('test'):>6}")
    print("   segment middle, test loss error by BatchNorm images: "
          + ", ".join(f"{n} {e:+.2%}" for n, e in v["bn_images_error_segment_middle"].items()))


def bn_at_default(v: dict) -> float:
    """The test-loss error at the segment's middle with BatchNorm statistics from the default number of images
    (the nearest size measured)."""
    sizes = {int(n): e for n, e in v["bn_images_error_segment_middle"].items()}
    return sizes[min(sizes, key=lambda n: abs(n - v["default"]["bn"]))]


def print_table(r: dict) -> None:
    rows = table_rows(r)
    width = max(len(row[0]) for row in rows)
    print(f"\n{'figure':{width}} {'measured':>28} {'target':>9}  met")
    for name, value, target, met in rows:
        print(f"{name:{width}} {value:>28} {target:>9}  {'' if met is None else ('yes' if met else 'NO')}")
    print(machine_line(r["machine"]))


if __name__ == "__main__":
    cli.run(main)
