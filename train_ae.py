"""Train one autoencoder endpoint: `python train_ae.py --loss mse --seed 0`.

Writes a checkpoint (state_dict + plain config + final metrics), a metrics JSON with the
per-epoch history, and a PNG of test images over their reconstructions, all atomically. The
same seed and flags on CPU give identical weights; `--resume` continues an interrupted run.

`--snapshots N` also keeps N checkpoints per epoch for function_space.py (lib/snapshots.py says where and when).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ae
import data
from lib import cli, training
from lib.files import AE_FORMAT, UserError, atomic_write, ensure_dir, load_checkpoint, save_ae, write_json

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--loss", default="mse", choices=ae.LOSSES, help="training loss")
    p.add_argument("--seed", type=int, default=0, help="fixes initialisation, data order and the noise of --noise")
    p.add_argument("--noise", type=cli.nonnegative_float, default=0.0, metavar="SIGMA",
                   help="denoising: add Gaussian noise of std SIGMA to each input (clipped to [0, 1]); the target stays the clean image")
    p.add_argument("--l1", type=cli.nonnegative_float, default=0.0, metavar="LAMBDA",
                   help="sparse: add LAMBDA x mean |code| of the bottleneck to the loss")
    data.add_data_args(p)
    p.add_argument("--epochs", type=cli.positive_int, default=10, help="passes over the training images")
    p.add_argument("--batch-size", type=cli.positive_int, default=128, help="images per optimiser step")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam learning rate (the schedule's base rate)")
    training.add_schedule_arg(p)
    p.add_argument("--latent-dim", type=cli.positive_int, default=128, help="size of the bottleneck")
    p.add_argument("--width", type=cli.positive_int, default=32, help="channels of the first conv layer (doubles 3 times)")
    p.add_argument("--vgg-weights", default="imagenet",
                   help="VGG16 weights for --loss perceptual: imagenet (torchvision cache or download), random (seeded, offline only), or a .pth file")
    p.add_argument("--vgg-layers", nargs="+", default=list(ae.VGG_DEFAULT_LAYERS), choices=list(ae.VGG_LAYERS), metavar="LAYER",
                   help=f"VGG16 feature maps the perceptual loss compares, from {', '.join(ae.VGG_LAYERS)}")
    training.add_precision_arg(p)
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=256, help="images per forward pass when evaluating")
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help="checkpoint path (default: runs/ae/{group}_s{seed}.pt, the group being the loss with +noise=SIGMA, "
                                                "+l1=LAMBDA when given; --subspace: {group}_s{seed}-line.pt, -bezier.pt); .json, .png beside it")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last completed epoch")
    p.add_argument("--snapshots", type=cli.nonnegative_int, default=0, metavar="N",
                   help="keep N checkpoints per epoch, evenly spaced in optimiser steps, the last at the epoch's end, in "
                        "<out without .pt>.snapshots/step<global step>.pt (0: none)")
    p.add_argument("--subspace", choices=("line", "bezier"), help="train a line (bezier: quadratic Bezier curve) of autoencoders from scratch instead "
                   "(lib/subspace.py): ends (and bend) from seeds SEED, SEED+1 (SEED+2), all trained, one alpha ~ U(0,1) a batch; BatchNorm recomputed "
                   "at each evaluated alpha; nets at alpha 0, 0.5, 1 in <out stem>-a0.pt, -a0.5.pt, -a1.pt. cos^2: of the ends' weights (bezier: all pairs)")
    p.add_argument("--cosine-reg", type=cli.nonnegative_float, default=1.0, metavar="BETA", help="--subspace: adds BETA x cos^2(w_0, w_1) to the loss")
    return p.parse_args(argv)


def default_out(group: str, seed: int) -> Path:
    return Path("runs/ae") / f"{group}_s{seed}.pt"


def save_reconstructions(path: Path, model: torch.nn.Module, images: torch.Tensor, device: torch.device, n: int = 8) -> None:
    """PNG: n test images (top row) over their reconstructions (bottom row)."""
    from torchvision.utils import make_grid, save_image  # here: importing torchvision takes 1.5 s

    x = images[:n].to(device).float().div(255)
    model.eval()
    with torch.inference_mode():
        recon = model(x)
    grid = make_grid(torch.cat([x, recon]).cpu(), nrow=len(x), padding=2)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.subspace: return cli.optional("subspace", "--subspace").main(args)  # noqa: E701  (lib/subspace.py: all of it)
    device = cli.pick_device(args.device)
    group = ae.group_name(args.loss, args.noise, args.l1)
    out = Path(args.out) if args.out else default_out(group, args.seed)
    ensure_dir(out.parent)
    resume_file = training.resume_path(out)
    if args.resume and out.exists() and not resume_file.exists():
        print(f"{out} is already complete; nothing to resume")
        return load_checkpoint(out, AE_FORMAT, ("metrics",))["metrics"]
    data_cfg = data.data_config(args)
    train_images, test_images = (data.load_split(data_cfg, split) for split in ("train", "test"))

    cli.seed_everything(args.seed)
    model = ae.AutoEncoder(args.latent_dim, args.width).to(device, memory_format=torch.channels_last)
    loss_fn = training.make_loss(args.loss, args.vgg_weights, tuple(args.vgg_layers), device)
    objective = training.Objective(loss_fn, args.noise, args.l1)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    precision = training.resolve_precision(args.precision, device, args.loss, args.resume and resume_file)
    run_config = {"model": ae.model_config(model), "loss": args.loss, "seed": args.seed, "data": data_cfg,
                  "batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule, "epochs": args.epochs,
                  "precision": precision, "noise": args.noise, "l1": args.l1,
                  "vgg_weights": loss_fn.weights_name if args.loss == "perceptual" else None,
                  "vgg_layers": list(args.vgg_layers) if args.loss == "perceptual" else None}

    start, history = 0, []
    if args.resume and resume_file.exists():
        start, history = training.load_resume(resume_file, model, optimizer, run_config)
        print(f"resuming {out} after epoch {start}")
    elif args.resume:
        print(f"no {resume_file} to resume from; starting from scratch")
    print(f"training {group} autoencoder, seed {args.seed}: {len(train_images)} train / {len(test_images)} test images, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}, precision {precision}"
          + (f", VGG16 weights: {run_config['vgg_weights']}, layers {', '.join(args.vgg_layers)}" if args.loss == "perceptual" else ""))
    evaluate = dict(loss_fn=objective, batch_size=args.eval_batch_size, device=device)
    per_epoch = training.steps_per_epoch(len(train_images), args.batch_size)
    if args.snapshots > per_epoch:
        raise UserError(f"--snapshots {args.snapshots} is more than the {per_epoch} optimiser steps of an epoch; "
                        f"use at most {per_epoch}")
    snapshot_dir = ensure_dir(out.with_suffix(".snapshots")) if args.snapshots else None
    snapshots = cli.optional("snapshots", "--snapshots") if args.snapshots else None
    targets = training.target_feature_cache(objective, train_images, batch_size=args.eval_batch_size, device=device, precision=precision)
    step = training.Step(objective, optimizer, device, args.batch_size, precision, target_features=targets,
                         lr_at=training.schedule_rates(args.schedule, args.lr, per_epoch * args.epochs))
    for epoch in range(start, args.epochs):
        t0 = time.time()
        snapshot = snapshots and snapshots.hook(snapshot_dir, model, run_config, out, epoch, per_epoch, args.snapshots)
        train_loss = training.train_epoch(model, train_images, step, generator=training.epoch_generator(args.seed, epoch),
                                          epoch=epoch, after_step=snapshot)
        test = training.evaluate(model, test_images, **evaluate)
        lr = step.lr_at((epoch + 1) * per_epoch - 1)
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "test_loss": test["loss"], "test_mse": test["mse"],
                        "seconds": time.time() - t0})
        extra = f"  test mse {test['mse']:.5f}" if group != "mse" else ""
        print(f"epoch {epoch + 1}/{args.epochs}: lr {lr:.3g}  train {group} {train_loss:.5f}  test {group} {test['loss']:.5f}"
              f"{extra}  ({time.time() - t0:.1f}s)", flush=True)
        training.save_resume(resume_file, model, optimizer, epoch, history, run_config)

    final_train = training.evaluate(model, train_images[: len(test_images)], **evaluate)
    final_test = training.evaluate(model, test_images, **evaluate)
    metrics = {"train_loss": final_train["loss"], "test_loss": final_test["loss"], "test_loss_se": final_test["loss_se"],
               "test_mse": final_test["mse"], "test_mse_se": final_test["mse_se"], "test_psnr": final_test["psnr"],
               "epochs": args.epochs, "schedule": args.schedule, "history": history}
    if group == "perceptual":
        metrics["test_perceptual"] = final_test["loss"]
    # the checkpoint is written last: its presence means the run (and its JSON and PNG) is complete
    save_reconstructions(out.with_suffix(".png"), model, test_images, device)
    kept = {"snapshots": {"folder": str(snapshot_dir), "per_epoch": args.snapshots}} if args.snapshots else {}
    write_json(out.with_suffix(".json"), {"checkpoint": str(out), "config": run_config, **metrics, **kept})
    save_ae(out, model, run_config, {**metrics, "history": training.without_timing(history)})
    resume_file.unlink(missing_ok=True)
    print(f"wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.png')}: test {group} {final_test['loss']:.5f}, "
          f"test mse (clean inputs) {final_test['mse']:.5f}, test psnr {final_test['psnr']:.2f} dB")
    return metrics


if __name__ == "__main__":
    cli.run(main)
