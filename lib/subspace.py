"""A line (or Bezier curve) of autoencoders learned from scratch: `python train_ae.py --subspace line`.

Wortsman et al. 2021, "Learning Neural Network Subspaces" (arXiv 2102.10472). Unlike fit_curve.py, nothing is
fixed: the ends w_0 (alpha = 0) and w_1 (alpha = 1), and for `bezier` the bend theta of the quadratic Bezier curve
(1-a)^2 w_0 + 2a(1-a) theta + a^2 w_1, start from independent initialisations and train together from scratch.
Each batch draws one alpha ~ U(0, 1) from the epoch's generator and takes an Adam step on the group's objective
at phi(alpha), plus BETA (--cosine-reg, default 1, as the reference code) times cos^2(w_0, w_1), the squared cosine
between the ends' flat vectors of convolution, transposed-convolution and linear weights (not biases, not
BatchNorm's scale and shift: the reference code takes its convolutions' weights only, and BatchNorm scales, all 1
at both ends at the start, would make the ends look alike by construction: at width 16 cos^2 over every parameter
is 0.12 at the start, over the weights 1e-6). For `bezier` the term is the mean of
cos^2 over the three pairs of bends: the expectation of the reference code's one random pair per batch.
The term enters the optimised loss only; the reported training loss is the group's objective alone.

Initialisations, from --seed S: the end at alpha = 0 starts as `train_ae.py --seed S` starts (the global RNG seeded
with S, then the AutoEncoder built), the end at alpha = 1 as `--seed S+1` does, Bezier's bend as `--seed S+2`.
The data order and alpha come from S's epoch generators. So `--subspace line --seed 0` starts from the same two
networks as the endpoints `--seed 0` and `--seed 1` (and sees the batches of the first): they differ in training
jointly along a line rather than apart.

Evaluation, always with BatchNorm statistics recomputed at the alpha evaluated (training.recompute_bn, on the first
BN_IMAGES training images): after every epoch the test loss at alpha = 0.5; at the end the train and test loss and
MSE at alpha = 0, 0.5, 1, and the ensemble of the two ends (the mean of their reconstructions, scored by the group's
reconstruction loss and the MSE, as ensemble.py scores ensembles; see ensemble_scores for the denoising and sparse groups).

Writes, for <out> = runs/ae/{group}_s{seed}-line.pt (-bezier.pt) or --out: <out>-a0.pt, -a0.5.pt, -a1.pt (the
networks at alpha as ordinary autoencoder checkpoints, their BatchNorm statistics recomputed there: fit_curve.py
and every tool that reads endpoints read them), <out>.png (8 test images over their reconstructions at alpha = 0, 0.5, 1),
<out>.json (the numbers, the per-epoch history), and last <out> itself (all bends, the config, the history, the
final metrics; its BatchNorm buffers are those of alpha = 0.5). `--resume` continues after the last completed epoch
and ends on the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

import ae
import curves
import data
from lib import cli, training
from lib.files import SUBSPACE_FORMAT, UserError, atomic_write, ensure_dir, load_checkpoint, save_ae, save_checkpoint, write_json

SHAPES = {"line": ("polychain", 2), "bezier": ("bezier", 3)}  # --subspace: the CurveNet's curve and bends
ALPHAS = (0.0, 0.5, 1.0)
BN_IMAGES = 2000  # training images for every BatchNorm recomputation, as fit_curve.py's --bn-images default
CHANNELS_LAST = torch.channels_last


def default_out(group: str, seed: int, subspace: str) -> Path:
    return Path("runs/ae") / f"{group}_s{seed}-{subspace}.pt"


def alpha_path(out: Path, alpha: float) -> Path:
    """Where the network at `alpha` goes: <out without .pt>-a0.pt, -a0.5.pt, -a1.pt."""
    return out.with_name(f"{out.stem}-a{alpha:g}.pt")


def seed_offsets(num_bends: int) -> list[int]:
    """Bend j's seed minus --seed: 0 for the end at alpha = 0, 1 for the end at alpha = 1, 2, 3, ... for the bends between."""
    return [0, *range(2, num_bends), 1]


def build(subspace: str, latent_dim: int, width: int, seed: int) -> curves.CurveNet:
    """The line (or Bezier curve) at its start: every bend trainable, bend j initialised as train_ae.py initialises
    its model for seed + seed_offsets[j]; the BatchNorm buffers are a fresh model's."""
    curve, k = SHAPES[subspace]
    starts = []
    for offset in seed_offsets(k):
        cli.seed_everything(seed + offset)
        starts.append(ae.AutoEncoder(latent_dim, width).state_dict())
    cli.seed_everything(seed)
    net = curves.CurveNet(ae.AutoEncoder(latent_dim, width), curve, k, fix_ends=False)
    for j, state in enumerate(starts):
        net.import_endpoint(state, j, buffers=j == 0)
    return net


def weight_layers(net: curves.CurveNet) -> list[curves.CurveModule]:
    """The layers whose weights the cosine term compares: convolutions, transposed convolutions, linear layers."""
    return [layer for _, layer in net.layers if not isinstance(layer, curves.CurveBatchNorm2d) and "weight" in layer.param_names]


def cosine_sq(net: curves.CurveNet) -> torch.Tensor:
    """cos^2 between the bends' flat weight vectors (weight_layers), differentiable: for two bends G_01^2 / (G_00 G_11)
    with G their Gram matrix, summed layer by layer in float64 (products taken in place: flat copies of the channels-last
    tensors cost 2 to 3 times as much); for more bends, the mean over all pairs."""
    k, layers = net.num_bends, weight_layers(net)
    gram = {(i, j): sum(torch.sum(layer.bends("weight")[i] * layer.bends("weight")[j], dtype=torch.float64) for layer in layers)
            for i in range(k) for j in range(i, k)}
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    return sum(gram[i, j] ** 2 / (gram[i, i] * gram[j, j]) for i, j in pairs) / len(pairs)


@torch.no_grad()
def cosine_value(net: curves.CurveNet) -> float:
    return float(cosine_sq(net))


@torch.no_grad()
def ensemble_scores(models: list[torch.nn.Module], images: torch.Tensor, objective, *, batch_size: int,
                    device: torch.device) -> dict:
    """The ensemble of `models` (used as they are, in eval mode): per image, the mean of their reconstructions of the
    input the objective sees (a denoising group's fixed evaluation noise, training.eval_noise_generator, as in
    training.evaluate), scored against the clean image by the group's reconstruction loss (no L1 term: an ensemble has
    no one code), and the MSE of the mean of their reconstructions of the clean image; means, standard errors, PSNR."""
    objective = training.as_objective(objective)
    loss, sq = [], []
    for i, x in enumerate(data.batches(images, batch_size, device=device, memory_format=CHANNELS_LAST)):
        seen = objective.inputs(x, training.eval_noise_generator(i * batch_size))
        recon = torch.stack([m.eval()(seen).float() for m in models]).mean(dim=0)
        loss.append(objective.loss_fn(recon, x, reduction="none").float().cpu())
        if objective.noise:
            recon = torch.stack([m(x).float() for m in models]).mean(dim=0)
        sq.append(ae.mse(recon, x, reduction="none").cpu())
    (mean, se), (sq_mean, sq_se) = training.mean_and_se(torch.cat(loss)), training.mean_and_se(torch.cat(sq))
    return {"test_loss": mean, "test_loss_se": se, "test_mse": sq_mean, "test_mse_se": sq_se, "test_psnr": ae.psnr(sq_mean)}


def save_strip(path: Path, models: list[torch.nn.Module], images: torch.Tensor, device: torch.device, n: int = 8) -> None:
    """PNG: n test images (top row) over their reconstructions by each model (one row each)."""
    x = images[:n].to(device).float().div(255)
    with torch.inference_mode():
        rows = [x] + [m.eval()(x) for m in models]
    atomic_write(path, lambda f: save_image(make_grid(torch.cat(rows).cpu(), nrow=len(x), padding=2), f, format="png"))


def main(args: argparse.Namespace) -> dict:
    """train_ae.py --subspace: train, evaluate and write the line (see the module's docstring)."""
    if args.snapshots:
        raise UserError("--snapshots is not supported with --subspace (the snapshots are of one network); drop one of them")
    device = cli.pick_device(args.device)
    group = ae.group_name(args.loss, args.noise, args.l1)
    out = Path(args.out) if args.out else default_out(group, args.seed, args.subspace)
    resume_file = training.resume_path(out)
    if args.resume and out.exists() and not resume_file.exists():
        print(f"{out} is already complete; nothing to resume")
        return load_checkpoint(out, SUBSPACE_FORMAT, ("metrics",))["metrics"]
    data_cfg = data.data_config(args)
    train_images = data.load_split(data_cfg, "train")
    test_images = data.load_split(data_cfg, "test")
    bn_images = train_images[:BN_IMAGES]

    curve, k = SHAPES[args.subspace]
    net = build(args.subspace, args.latent_dim, args.width, args.seed).to(device, memory_format=CHANNELS_LAST)
    loss_fn = training.make_loss(args.loss, args.vgg_weights, tuple(args.vgg_layers), device)
    objective = training.Objective(loss_fn, args.noise, args.l1)
    ensure_dir(out.parent)  # after the checks that can refuse the flags: a refused run leaves no folder behind
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    precision = training.resolve_precision(args.precision, device, args.loss, args.resume and resume_file)
    endpoint_config = {"model": ae.model_config(net.template), "loss": args.loss,
                       "seed": args.seed, "data": data_cfg, "batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule,
                       "epochs": args.epochs, "precision": precision, "noise": args.noise, "l1": args.l1,
                       "vgg_weights": loss_fn.weights_name if args.loss == "perceptual" else None,
                       "vgg_layers": list(args.vgg_layers) if args.loss == "perceptual" else None}
    run_config = {**endpoint_config, "subspace": args.subspace, "curve": curve, "num_bends": k, "cosine_reg": args.cosine_reg,
                  "init_seeds": [args.seed + o for o in seed_offsets(k)], "bn_images": len(bn_images)}

    start, history = 0, []
    if args.resume and resume_file.exists():
        start, history = training.load_resume(resume_file, net, optimizer, run_config)
        print(f"resuming {out} after epoch {start}")
    elif args.resume:
        print(f"no {resume_file} to resume from; starting from scratch")
    print(f"training a {args.subspace} of {group} autoencoders from scratch (bends from seeds {run_config['init_seeds']}, "
          f"cosine term x {args.cosine_reg:g}): {len(train_images)} train / {len(test_images)} test images, "
          f"{sum(p.numel() for p in net.parameters()):,} parameters in {k} bends, device {device}, precision {precision}")
    evaluate = dict(loss_fn=objective, batch_size=args.eval_batch_size, device=device)

    def with_bn_at(alpha: float) -> None:
        training.recompute_bn(net, bn_images, objective.noise, batch_size=args.eval_batch_size, device=device, t=alpha)

    per_epoch = training.steps_per_epoch(len(train_images), args.batch_size)
    targets = training.target_feature_cache(objective, train_images, batch_size=args.eval_batch_size, device=device, precision=precision)
    penalty = (lambda model: args.cosine_reg * cosine_sq(net).float()) if args.cosine_reg else None
    step = training.Step(objective, optimizer, device, args.batch_size, precision, t_of=lambda i, u: u, penalty=penalty,
                         target_features=targets, lr_at=training.schedule_rates(args.schedule, args.lr, per_epoch * args.epochs))
    for epoch in range(start, args.epochs):
        t0 = time.time()
        train_loss = training.train_epoch(net, train_images, step, generator=training.epoch_generator(args.seed, epoch),
                                          epoch=epoch, desc=args.subspace)
        with_bn_at(0.5)
        mid = training.evaluate(net, test_images, t=0.5, **evaluate)["loss"]
        cos2, lr = cosine_value(net), step.lr_at((epoch + 1) * per_epoch - 1)
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "test_loss_a05": mid, "cosine_sq": cos2,
                        "seconds": time.time() - t0})
        print(f"epoch {epoch + 1}/{args.epochs}: lr {lr:.3g}  train E_alpha {group} {train_loss:.5f}  test {group} at alpha=0.5 "
              f"{mid:.5f}  cos^2 {cos2:.3g}  ({time.time() - t0:.1f}s)", flush=True)
        training.save_resume(resume_file, net, optimizer, epoch, history, run_config)
    line_state = {name: v.detach().cpu().contiguous().clone() for name, v in net.state_dict().items()}  # BatchNorm at alpha 0.5

    points, models = [], {}
    for alpha in ALPHAS:
        with_bn_at(alpha)
        model = net.export(alpha).to(device, memory_format=CHANNELS_LAST).eval()
        final_train = training.evaluate(model, train_images[: len(test_images)], **evaluate)
        final_test = training.evaluate(model, test_images, **evaluate)
        models[alpha] = model
        points.append({"alpha": alpha, "checkpoint": alpha_path(out, alpha).name, "train_loss": final_train["loss"],
                       "test_loss": final_test["loss"], "test_loss_se": final_test["loss_se"], "test_mse": final_test["mse"],
                       "test_mse_se": final_test["mse_se"], "test_psnr": final_test["psnr"]})
    ends = [models[0.0], models[1.0]]
    ensemble = {"members": [points[0]["checkpoint"], points[-1]["checkpoint"]],  # file names beside <out>: moving the folder keeps them
                "definition": "mean of the two ends' reconstructions, scored by the group's reconstruction loss (on the inputs "
                              "the objective sees, without an L1 term) and the MSE (clean inputs); each end's BatchNorm "
                              "statistics recomputed at its alpha",
                **ensemble_scores(ends, test_images, objective, batch_size=args.eval_batch_size, device=device),
                "member_test_loss": [ensemble_scores([m], test_images, objective, batch_size=args.eval_batch_size,
                                                     device=device)["test_loss"] for m in ends]}
    with torch.no_grad():
        distance = float((net.bend_vector(0) - net.bend_vector(k - 1)).double().norm())
    metrics = {"alphas": points, "ensemble_of_ends": ensemble, "cosine_sq": cosine_value(net), "end_distance": distance,
               "epochs": args.epochs, "schedule": args.schedule}

    # the line's checkpoint is written last: its presence means the run (and everything beside it) is complete
    save_strip(out.with_suffix(".png"), [models[a] for a in ALPHAS], test_images, device)
    for point in points:
        alpha = point["alpha"]
        config = {**endpoint_config, "subspace_point": {"subspace": args.subspace, "alpha": alpha, "line": out.name,
                                                        "init_seeds": run_config["init_seeds"]}}
        own = {key: point[key] for key in ("train_loss", "test_loss", "test_loss_se", "test_mse", "test_mse_se", "test_psnr")}
        save_ae(alpha_path(out, alpha), models[alpha], config, {**own, "epochs": args.epochs, "schedule": args.schedule,
                                                                "history": training.without_timing(history)})
    write_json(out.with_suffix(".json"), {"format": SUBSPACE_FORMAT, "checkpoint": str(out), "config": run_config, **metrics,
                                          "history": history})
    save_checkpoint(out, SUBSPACE_FORMAT, {"state_dict": line_state, "config": run_config, "metrics": metrics,
                                           "history": training.without_timing(history)})
    resume_file.unlink(missing_ok=True)
    for point in points:
        extra = f", test mse {point['test_mse']:.5f} +- {point['test_mse_se']:.5f}" if group != "mse" else ""
        print(f"alpha {point['alpha']:g}: test {group} {point['test_loss']:.5f} +- {point['test_loss_se']:.5f}{extra}")
    extra = f", test mse {ensemble['test_mse']:.5f}" if group != "mse" else ""
    print(f"ensemble of the two ends: test {group} {ensemble['test_loss']:.5f} +- {ensemble['test_loss_se']:.5f}{extra} (each end alone: {', '.join(f'{v:.5f}' for v in ensemble['member_test_loss'])}); cos^2 of the bends' weights {metrics['cosine_sq']:.3g}, ||w_0 - w_1|| {distance:.4g}")
    print(f"wrote {', '.join(str(alpha_path(out, a)) for a in ALPHAS)}, {out.with_suffix('.png')}, {out.with_suffix('.json')}, {out}")
    return metrics
