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
import cli
import curves
import data
import eval_curve
import faces
import fit_curve
import training
from files import UserError, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--repeats", type=cli.positive_int, default=9, help="timed repeats per figure (the median is reported)")
    p.add_argument("--batch-size", type=cli.positive_int, default=128)
    p.add_argument("--width", type=cli.positive_int, default=32, help="autoencoder width (32 is the default AutoEncoder)")
    p.add_argument("--eval-train", type=cli.positive_int, default=20000, help="synthetic training images for the evaluation benchmark")
    p.add_argument("--eval-points", type=cli.positive_int, default=3, help="values of t timed in the evaluation benchmark (the exhaustive one is slow)")
    p.add_argument("--study", action="store_true", help="also time run_study.py --preset quick (minutes)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a figure misses its target (after printing and writing all)")
    cli.add_device_arg(p)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--out", default="runs/bench.json")
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


def train_step(model, loss_fn, optimizer, x, precision="fp32", **kwargs):
    """One optimisation step, as training.train_epoch takes it."""
    def step():
        _, loss = training.forward_loss(model, x, loss_fn, precision, x.device, kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def batch(n: int, device, memory_format=torch.channels_last) -> torch.Tensor:
    return next(data.batches(faces.synthetic_faces(0, n), n, device=device, memory_format=memory_format))


def bench_curve_overhead(args, device) -> dict:
    """1. One step of the plain AutoEncoder vs one step of its 3-bend curve network, timed in
    alternation (plain, curve, plain, ...) so that drift in the machine's speed hits both alike."""
    x = batch(args.batch_size, device)
    torch.manual_seed(0)
    plain = ae.AutoEncoder(width=args.width).to(device, memory_format=torch.channels_last)
    net = curves.CurveNet(plain, "bezier", 3).to(device, memory_format=torch.channels_last)
    steps = [train_step(plain, ae.mse, torch.optim.Adam(plain.parameters()), x),
             train_step(net, ae.mse, torch.optim.Adam(net.free_parameters()), x)]
    times = [[], []]
    for i in range(2 * (args.repeats + 1)):
        times[i % 2].append(median_seconds(steps[i % 2], 1, warmup=0))
    t_plain, t_curve = statistics.median(times[0][1:]), statistics.median(times[1][1:])  # first of each: warm-up
    ratio = statistics.median(c / p for p, c in zip(times[0][1:], times[1][1:]))
    return {"plain_step_s": t_plain, "curve_step_s": t_curve, "ratio": ratio, "target": "<= 1.10", "met": ratio <= 1.10}


def dense_kernels(device, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a few dense float32 kernels, the ceiling a training step is held against: square and
    rectangular GEMMs (cuBLAS/oneDNN's best case) and a large 3x3 convolution in channels_last."""
    rates = {}
    for m, k, n in ((2048, 2048, 2048), (4096, 1024, 4096), (8192, 512, 1024)):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        rates[f"gemm {m}x{k}x{n}"] = 2 * m * k * n / median_seconds(lambda: a @ b, repeats)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device, memory_format=torch.channels_last)
    x = torch.randn(32, 128, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        rates["conv3x3 128->128, 32x32, batch 32, channels_last"] = 2 * 32 * 128 * 32 * 32 * 128 * 9 / median_seconds(lambda: conv(x), repeats)
    return rates


def bench_efficiency(args, device) -> dict:
    """2. FLOP/s of a training step against the best dense kernel measured in the same run; contiguous vs channels_last."""
    kernels = dense_kernels(device)
    best_kernel = max(kernels, key=kernels.get)
    rate = kernels[best_kernel]
    out = {"kernels_gflops": {name: r / 1e9 for name, r in kernels.items()}, "best_kernel": best_kernel, "best_kernel_gflops": rate / 1e9,
           "matmul_gflops": kernels["gemm 2048x2048x2048"] / 1e9}
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        torch.manual_seed(0)
        model = ae.AutoEncoder(width=args.width).to(device, memory_format=fmt)
        x = batch(args.batch_size, device, fmt)
        step = train_step(model, ae.mse, torch.optim.Adam(model.parameters()), x)
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        seconds = median_seconds(step, args.repeats)
        out[name] = {"step_s": seconds, "gflop_per_step": flops / 1e9, "gflops": flops / seconds / 1e9,
                     "fraction_of_best_kernel": flops / seconds / rate}
    out["channels_last_speedup"] = out["contiguous"]["step_s"] / out["channels_last"]["step_s"]
    best = max(out["contiguous"]["fraction_of_best_kernel"], out["channels_last"]["fraction_of_best_kernel"])
    out.update(target=">= 0.70 of the best dense kernel", met=best >= 0.70, best_fraction=best)
    return out


def quick_endpoint(images, seed, args, device) -> ae.AutoEncoder:
    """An endpoint trained for one short epoch, so the losses along the path are those of a real model."""
    torch.manual_seed(seed)
    model = ae.AutoEncoder(width=args.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    training.train_epoch(model, images[:1536], ae.mse, optimizer, batch_size=args.batch_size,
                         generator=training.epoch_generator(seed, 0), device=device, epoch=0)
    return model


def exhaustive_point(net, t, train, test, device) -> dict:
    """The reference code's evaluation of one point: BatchNorm statistics and loss over the whole
    training set (batches of 128, as its loaders give them), then the whole test set."""
    curves.update_bn(net, data.batches(train, 128, device=device, memory_format=torch.channels_last), t=t)
    return {split: training.evaluate(net, images, ae.mse, batch_size=128, device=device, t=t)["loss"]
            for split, images in (("train", train), ("test", test))}


def bench_eval(args, device) -> dict:
    """3. eval_curve's default evaluation vs the exhaustive one, per point of t."""
    config = data.data_config(argparse.Namespace(synthetic_size=args.eval_train, cache_dir=args.cache_dir))
    train, test = data.load_split(config, "train"), data.load_split(config, "test")
    a, b = quick_endpoint(train, 1, args, device), quick_endpoint(train, 2, args, device)
    net = fit_curve.build_curve(a, b, "bezier", 3)
    with torch.no_grad():  # a bend off the segment, as after fitting
        for p in net.free_parameters():
            p.add_(0.02 * torch.randn_like(p))
    net = net.to(device, memory_format=torch.channels_last)
    defaults = eval_curve.parse_args([])
    ts = np.linspace(0, 1, args.eval_points).tolist()
    subsets = {"train": train[: defaults.train_images], "test": test[: defaults.test_images]}
    start = time.perf_counter()
    fast, _ = eval_curve.evaluate_path(net, ts, subsets, ae.mse, bn_images=train[: defaults.bn_images], shown=batch(1, device),
                                       columns=[], batch_size=defaults.eval_batch_size, device=device, desc="default eval")
    t_fast = (time.perf_counter() - start) / len(ts)
    start = time.perf_counter()
    slow = [exhaustive_point(net, t, train, test, device) for t in ts]
    t_slow = (time.perf_counter() - start) / len(ts)
    errors = {split: max(abs(fast[f"{split}_loss"][i] / slow[i][split] - 1) for i in range(len(ts))) for split in ("train", "test")}
    speedup = t_slow / t_fast
    return {"train_images": len(train), "test_images": len(test), "points_timed": len(ts),
            "default_subsets": {"bn": defaults.bn_images, "train": defaults.train_images, "test": defaults.test_images},
            "default_s_per_point": t_fast, "exhaustive_s_per_point": t_slow, "speedup": speedup,
            "projected_61_points_s": {"default": 61 * t_fast, "exhaustive": 61 * t_slow},
            "max_rel_error": errors, "max_reported_se_rel": max(fast["train_loss_se"][i] / fast["train_loss"][i] for i in range(len(ts))),
            "target": ">= 5x faster, within 1% at every point",
            "met": speedup >= 5 and max(errors.values()) <= 0.01}


def bench_data(args, device, train_rate: float) -> dict:
    """4. Images per second of an epoch from the uint8 cache vs decoding JPEG files every epoch."""
    images = faces.synthetic_faces(0, 4096)
    cached = median_seconds(lambda: [x.sum() for x in data.batches(images, args.batch_size, shuffle=True, device=device,
                                                                    memory_format=torch.channels_last)], args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, img in enumerate(faces.synthetic_faces(0, 300)):  # CelebA-sized JPEGs
            path = Path(tmp) / f"{i:06d}.jpg"
            Image.fromarray(img.permute(1, 2, 0).numpy()).resize((178, 218)).save(path, quality=90)
            paths.append(path)
        decode = median_seconds(lambda: [data.decode_image(p, data.CELEBA_CROP) for p in paths], max(1, args.repeats // 2))
    cache_rate, jpeg_rate = len(images) / cached, len(paths) / decode
    return {"cache_images_per_s": cache_rate, "jpeg_images_per_s": jpeg_rate, "cache_over_jpeg": cache_rate / jpeg_rate,
            "training_images_per_s": train_rate, "cache_over_training": cache_rate / train_rate,
            "target": "cache >= 20x training throughput", "met": cache_rate >= 20 * train_rate}


def bench_perceptual(args, device) -> dict:
    """5. Perceptual step vs MSE step, in fp32 and at the default precision (bf16 inside VGG where
    the hardware has it); and the fp32 loss without its savings (target features with gradient,
    VGG kept to relu4_3 although relu3_3 is the last layer used, pow(2).mean for the distance)."""
    x = batch(args.batch_size // 2, device)
    out = {"precision": training.resolve_precision("auto", device, "perceptual")}
    loss = ae.PerceptualLoss("random").to(device, memory_format=torch.channels_last)

    def naive(recon, target):
        full = ae.vgg16_features("random")[: ae.VGG_LAYERS["relu4_3"] + 1].to(device, memory_format=torch.channels_last)
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

    for name, fn, precision in (("mse", ae.mse, "fp32"), ("perceptual_fp32", loss, "fp32"), ("perceptual", loss, out["precision"]),
                                ("perceptual_naive", naive, "fp32")):
        torch.manual_seed(0)
        model = ae.AutoEncoder(width=args.width).to(device, memory_format=torch.channels_last)
        step = train_step(model, fn, torch.optim.Adam(model.parameters()), x, precision)
        out[f"{name}_step_s"] = median_seconds(step, max(2, args.repeats // 2))
    out["perceptual_over_mse"] = out["perceptual_step_s"] / out["mse_step_s"]
    out["perceptual_fp32_over_mse"] = out["perceptual_fp32_step_s"] / out["mse_step_s"]
    out["naive_over_ours"] = out["perceptual_naive_step_s"] / out["perceptual_fp32_step_s"]
    out.update(batch_size=len(x), target="<= 8x", met=out["perceptual_over_mse"] <= 8)
    return out


def bench_study(args) -> dict:
    """6. Wall time of the quick study, per kind of step."""
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    torch.manual_seed(0)
    results = {"machine": {"device": str(device), "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}}
    results["curve_overhead"] = bench_curve_overhead(args, device)
    print(f"1. curve step / plain step: {results['curve_overhead']['ratio']:.3f} (target <= 1.10)", flush=True)
    results["efficiency"] = eff = bench_efficiency(args, device)
    print(f"2. training step: {eff['channels_last']['gflops']:.1f} GFLOP/s channels_last, {eff['contiguous']['gflops']:.1f} contiguous; "
          f"dense kernels " + ", ".join(f"{k} {v:.0f}" for k, v in eff["kernels_gflops"].items()) + " GFLOP/s", flush=True)
    results["eval"] = bench_eval(args, device)
    print(f"3. evaluation speedup {results['eval']['speedup']:.1f}x, max error {max(results['eval']['max_rel_error'].values()):.2%}", flush=True)
    train_rate = args.batch_size / eff["channels_last"]["step_s"]
    results["data"] = bench_data(args, device, train_rate)
    print(f"4. cache {results['data']['cache_images_per_s']:.0f} img/s vs training {train_rate:.0f} img/s", flush=True)
    results["perceptual"] = bench_perceptual(args, device)
    print(f"5. perceptual / mse step: {results['perceptual']['perceptual_over_mse']:.1f}", flush=True)
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
        ("2. train step FLOP/s / best dense kernel's", f"{e['best_fraction']:.0%}", ">= 70%", e["met"]),
        (f"   best dense kernel: {e['best_kernel'].split(',')[0]}", f"{e['best_kernel_gflops']:.0f} GFLOP/s", "-", None),
        ("   channels_last speed-up over contiguous", f"{e['channels_last_speedup']:.2f}x", "-", None),
        ("3. default eval speed-up over exhaustive", f"{v['speedup']:.1f}x", ">= 5x", v["speedup"] >= 5),
        ("   max relative error (train, test)", f"{v['max_rel_error']['train']:.2%}, {v['max_rel_error']['test']:.2%}", "<= 1%",
         max(v["max_rel_error"].values()) <= 0.01),
        ("4. cache img/s / training img/s", f"{d['cache_over_training']:.0f}x", ">= 20x", d["met"]),
        ("   cache img/s / JPEG decode img/s", f"{d['cache_over_jpeg']:.0f}x", "-", None),
        (f"5. perceptual step ({p['precision']}) / MSE step", f"{p['perceptual_over_mse']:.1f}x", "<= 8x", p["met"]),
        ("   perceptual step (fp32) / MSE step", f"{p['perceptual_fp32_over_mse']:.1f}x", "-", None),
        ("   naive perceptual / ours (fp32)", f"{p['naive_over_ours']:.2f}x", "> 1", p["naive_over_ours"] > 1),
    ]
    if "study" in r:
        s = r["study"]
        rows.append(("6. quick study wall time", f"{s['total_s']:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in s["per_kind_s"].items()) + ")",
                     "<= 360 s", s["met"]))
    return rows


def print_table(r: dict) -> None:
    print(f"\n{'figure':44} {'measured':>28} {'target':>9}  met")
    for name, value, target, met in table_rows(r):
        print(f"{name:44} {value:>28} {target:>9}  {'' if met is None else ('yes' if met else 'NO')}")
    print(f"machine: {r['machine']}")


if __name__ == "__main__":
    cli.run(main)
