"""Fit a curve between two endpoints: `python fit_curve.py --a ckpt1 --b ckpt2 --curve bezier`.

The endpoints stay fixed; the middle bends start on the straight segment and are trained to
minimise E_{t~U(0,1)} L(phi(t)), one t drawn per batch (Garipov et al. 2018); `--objective
arclength` draws t with density proportional to ||phi'(t)|| instead. The loss, model
and data come from the endpoints' checkpoints. Writes a curve checkpoint (all bends, the curve
type, both endpoints' paths, hashes and configs) atomically; `--resume` continues a fit.
`--aligned` first permutes B's units to match A's (align.py), so the curve only has to do what
alignment cannot.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ae
import curves
import data
from lib import cli, training
from lib.training import CURVE_DIR, check_compatible, convergence
from lib.files import CURVE_FORMAT, UserError, ensure_dir, file_sha256, load_ae, save_checkpoint

OBJECTIVES = ("uniform", "arclength")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--a", required=True, help="endpoint checkpoint at t=0 (written by train_ae.py)")
    p.add_argument("--b", required=True, help="endpoint checkpoint at t=1, trained with the same loss and architecture")
    p.add_argument("--curve", default="bezier", choices=curves.CURVES, help="the curve's shape: a Bezier curve or a PolyChain through the bends")
    p.add_argument("--aligned", action="store_true",
                   help="fit the curve between A and B with B's units permuted to match A's (lib/align.py; B computes the same "
                        "function); recorded in the curve's config")
    p.add_argument("--align", default=cli.ALIGN_METHODS[0], choices=cli.ALIGN_METHODS,
                   help="--aligned: match B's units to A's by the correlation of their activations on the --bn-images training "
                        "images, or by their weights")
    p.add_argument("--num-bends", type=cli.at_least_two, default=3, help="bends including both endpoints")
    p.add_argument("--epochs", type=cli.positive_int, default=20, help="the curve has more to learn than an endpoint: twice train_ae.py's default")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam learning rate of the free bends (the schedule's base rate)")
    training.add_schedule_arg(p)
    p.add_argument("--objective", default="uniform", choices=OBJECTIVES,
                   help="how t is drawn per batch: uniform (the paper's E_{t~U(0,1)} L) or arclength (density proportional to "
                        "||phi'(t)||, the loss averaged over the curve's length)")
    p.add_argument("--arclength-every", type=cli.positive_int, default=50,
                   help="--objective arclength: retabulate ||phi'(t)|| from the bends every N steps (and at every epoch's start)")
    p.add_argument("--wd", type=cli.nonnegative_float, default=0.0, help="L2 weight decay on the free bends")
    p.add_argument("--batch-size", type=cli.positive_int, default=128, help="images per optimiser step (one t per batch)")
    p.add_argument("--seed", type=int, default=0, help="fixes the data order and the t drawn per batch")
    data.add_data_args(p, inherit=True)
    p.add_argument("--vgg-weights", default=None,
                   help="perceptual group only: the VGG16 weight file the endpoints were trained with, when they used one")
    p.add_argument("--bn-images", type=cli.positive_int, default=2000,
                   help="training images used to recompute BatchNorm statistics before each evaluation")
    training.add_precision_arg(p)
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=256, help="images per forward pass in the t=0.5 check")
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help=f"curve checkpoint (default: {CURVE_DIR}/<a>-<b>-<curve>.pt, with -arclength before .pt "
                                                f"for --objective arclength, -aligned for --aligned, -aligned-weights with --align weights)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fit from its last completed epoch")
    return p.parse_args(argv)


def default_out(a: str, b: str, curve: str, aligned: bool = False, objective: str = "uniform", align: str = cli.ALIGN_METHODS[0]) -> Path:
    """Each kind of fit its own file, so that one never overwrites another: <a>-<b>-<curve>[-arclength][-aligned[-weights]].pt."""
    suffix = ("-arclength" if objective == "arclength" else "") + ("-aligned" if aligned else "")
    suffix += f"-{align}" if aligned and align != cli.ALIGN_METHODS[0] else ""
    return CURVE_DIR / f"{Path(a).stem}-{Path(b).stem}-{curve}{suffix}.pt"


def build_curve(model_a: ae.AutoEncoder, model_b: ae.AutoEncoder, curve: str, num_bends: int) -> curves.CurveNet:
    """A CurveNet with A at t=0 (and A's BatchNorm buffers), B at t=1, middle bends on the segment."""
    net = curves.CurveNet(ae.build_model(ae.model_config(model_a)), curve, num_bends)
    net.import_endpoint(model_a.state_dict(), 0, buffers=True)
    net.import_endpoint(model_b.state_dict(), num_bends - 1)
    net.init_linear()
    return net


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    (model_a, ckpt_a), (model_b, ckpt_b) = load_ae(args.a), load_ae(args.b)
    if Path(args.a).resolve() == Path(args.b).resolve():
        raise UserError("--a and --b are the same file; a curve needs two different endpoints")
    cfg_a, cfg_b = ckpt_a["config"], ckpt_b["config"]
    check_compatible(cfg_a, cfg_b)
    data_cfg = data.data_config(args, base=cfg_a.get("data"))
    if cfg_a.get("data") != cfg_b.get("data"):
        print("warning: the endpoints were trained on different data settings; using those of --a unless flags say otherwise")
    out = Path(args.out) if args.out else default_out(args.a, args.b, args.curve, args.aligned, args.objective, args.align)
    ensure_dir(out.parent)
    resume_file = training.resume_path(out)
    if args.resume and out.exists() and not resume_file.exists():
        print(f"{out} is already complete; nothing to resume")
        return {}

    train_images, test_images = (data.load_split(data_cfg, split) for split in ("train", "test"))
    bn_images = train_images[: args.bn_images]
    cli.seed_everything(args.seed)
    objective = training.objective_from_config(cfg_a, args.vgg_weights, device)  # the curve minimises what the endpoints did
    group = ae.group_of(cfg_a)
    alignment = {}  # what the config records of it
    if args.aligned:
        aligned, info = cli.optional("align", "--aligned").align(model_a.state_dict(), model_b.state_dict(), cfg_a["model"],
                                                                 method=args.align, images=bn_images, noise=objective.noise,
                                                                 batch_size=args.eval_batch_size, device=device)
        model_b.load_state_dict(aligned)
        alignment = {"aligned": True, "alignment": info}
        print(f"aligned B to A by {info['method']}: ||A - B|| {info['distance_before']:.4g} -> "
              f"{info['distance_after']:.4g} ({info['units_moved']} of {info['units']} units moved)")
    net = build_curve(model_a, model_b, args.curve, args.num_bends).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.free_parameters(), lr=args.lr, weight_decay=args.wd)
    precision = training.resolve_precision(args.precision, device, cfg_a["loss"], args.resume and resume_file)
    endpoints = [{"path": str(p), "sha256": file_sha256(p), "config": c} for p, c in ((args.a, cfg_a), (args.b, cfg_b))]
    run_config = {"curve": args.curve, "num_bends": args.num_bends, "model": cfg_a["model"], "loss": cfg_a["loss"],
                  **ae.variant_settings(cfg_a), "vgg_weights": cfg_a.get("vgg_weights"), "vgg_layers": cfg_a.get("vgg_layers"), "data": data_cfg, "endpoints": endpoints,
                  "lr": args.lr, "schedule": args.schedule, "epochs": args.epochs, "wd": args.wd, "batch_size": args.batch_size,
                  "seed": args.seed, "precision": precision, "objective": args.objective,
                  "arclength_every": args.arclength_every if args.objective == "arclength" else None, **alignment}

    start, history = 0, []
    if args.resume and resume_file.exists():
        start, history = training.load_resume(resume_file, net, optimizer, run_config)
        print(f"resuming {out} after epoch {start}")
    evaluate = dict(loss_fn=objective, batch_size=args.eval_batch_size, device=device)

    def middle_test_loss() -> float:
        training.recompute_bn(net, bn_images, objective.noise, batch_size=args.eval_batch_size, device=device, t=0.5)
        return training.evaluate(net, test_images, t=0.5, **evaluate)["loss"]

    print(f"fitting a {args.curve} curve with {args.num_bends} bends between {args.a} and {args.b} "
          f"({group} loss, {args.objective} objective, {len(train_images)} train images, device {device}, precision {precision})")
    if start == 0:
        history.append({"epoch": 0, "train_loss": None, "test_loss_t05": middle_test_loss(), "seconds": 0.0})
        print(f"epoch 0 (linear initialisation): test {group} at t=0.5 {history[0]['test_loss_t05']:.5f}")
    per_epoch = training.steps_per_epoch(len(train_images), args.batch_size)
    sampler = curves.ArcLengthSampler(net) if args.objective == "arclength" else None
    targets = training.target_feature_cache(objective, train_images, batch_size=args.eval_batch_size, device=device, precision=precision)

    def t_of(step: int, u: float) -> float:  # a function of the step within the epoch: a resumed fit draws as one run
        if sampler is None:
            return u
        if step % args.arclength_every == 0:
            sampler.refresh()
        return sampler(u)

    step = training.Step(objective, optimizer, device, args.batch_size, precision, t_of=t_of, target_features=targets,
                         lr_at=training.schedule_rates(args.schedule, args.lr, per_epoch * args.epochs))
    for epoch in range(start, args.epochs):
        t0 = time.time()
        train_loss = training.train_epoch(net, train_images, step, generator=training.epoch_generator(args.seed, epoch),
                                          epoch=epoch, desc="curve")
        mid, lr = middle_test_loss(), step.lr_at((epoch + 1) * per_epoch - 1)
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "test_loss_t05": mid, "seconds": time.time() - t0})
        print(f"epoch {epoch + 1}/{args.epochs}: lr {lr:.3g}  train E_t {group} {train_loss:.5f}  "
              f"test {group} at t=0.5 {mid:.5f}  ({time.time() - t0:.1f}s)", flush=True)
        training.save_resume(resume_file, net, optimizer, epoch, history, run_config)

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_checkpoint(out, CURVE_FORMAT, {"state_dict": state, "config": run_config,
                                             "history": training.without_timing(history)})
    resume_file.unlink(missing_ok=True)
    check = convergence(history)
    if not check["converged"]:
        print(f"warning: not converged: the test loss at t=0.5 still fell by {100 * check['last_quarter_drop']:.1f}% over the "
              f"last {check['last_quarter_epochs']} epoch(s); fit with more --epochs")
    print(f"wrote {out}")
    return {"out": str(out), "history": history}


if __name__ == "__main__":
    cli.run(main)
