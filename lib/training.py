"""The numerical loops the scripts share. Training (train_ae.py, fit_curve.py, ensemble.py): the objective, rebuilt
from a config in one place; the learning-rate schedules; the arithmetic precision; one epoch of training; the
resume state written after every epoch. Evaluation (eval_curve, plane, ensemble, function_space, fit_curve):
per-image losses with standard errors, the one BatchNorm recomputation, a network measured at t on fixed subsets,
the estimators (plain subset means and control variates) and their statistics, the summaries of a path (ends,
maximum, barrier, paired SEs), the straight segment of a curve, the newest curve, and convergence of a fit."""
from __future__ import annotations

import argparse
import functools
import hashlib
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import ae
import curves
from lib import cli, files
from data import batch_indices, batches, to_batch
from lib.files import CheckpointError, UserError, load_checkpoint, plain_equal, save_checkpoint

SCHEDULES = ("ref", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16-vgg", "bf16")


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at optimiser step `step` (0-based) of `total_steps`. `ref` is the
    paper's reference code: constant for the first half, linear down to 1% at 90%, then 1%."""
    alpha = step / max(total_steps, 1)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * alpha))
    if schedule != "ref":
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if alpha <= 0.5:
        return 1.0
    return 1.0 - 0.99 * (alpha - 0.5) / 0.4 if alpha <= 0.9 else 0.01


def add_schedule_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedule", default="ref", choices=SCHEDULES,
                        help="learning rate per optimiser step: ref (the paper's reference code: the base rate for the first "
                             "50%% of the steps, then linear down to 1%% of it at 90%%, then 1%%), cosine (down to 0), or constant")


BF16_MIN_SPEEDUP = 1.2  # `auto` uses bf16 for a pass that measures at least this much faster in it


def resolve_precision(precision: str, device: torch.device, loss: str, resume: Path | None = None) -> str:
    """`auto`: bf16 inside VGG for the perceptual loss, bf16 for the whole pass otherwise, where bf16_fast says so;
    else fp32 (the accuracy and speed of each measured: docs/performance.md); a run resuming from `resume` (when
    that file exists) keeps what its start chose. Any other `precision` is itself."""
    if precision == "auto" and resume and resume.exists():
        saved = load_checkpoint(resume, files.RESUME_FORMAT, ("config",))["config"]
        return saved.get("precision", "fp32") if isinstance(saved, dict) else "fp32"  # load_resume checks it all
    if precision != "auto":
        return precision
    kind = "vgg" if loss == "perceptual" else "autoencoder"
    return ("bf16-vgg" if kind == "vgg" else "bf16") if bf16_fast(device, kind) else "fp32"


def bf16_fast(device: torch.device, kind: str) -> bool:
    """A CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX on which bf16_speedup(kind) reaches BF16_MIN_SPEEDUP."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = any(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)() for name in ("avx512_bf16", "amx_tile"))
    return device.type == "cpu" and native and bf16_speedup(kind) >= BF16_MIN_SPEEDUP


@functools.lru_cache(maxsize=None)
def bf16_speedup(kind: str) -> float:
    """fp32 / bf16 time on this CPU of a training pass (best of 5 after 2 warm-ups, in alternation) of the default `autoencoder`
    at batch 16 or of `vgg`'s relu1_2 convolution at batch 8 (frozen, as in the loss); once per process, RNG untouched."""
    with torch.random.fork_rng(devices=[]):  # random weights and images: a timing needs no seed
        net = (ae.AutoEncoder() if kind == "autoencoder" else nn.Conv2d(64, 64, 3, padding=1, bias=False)).to(memory_format=torch.channels_last)
        x = (torch.rand(16, 3, 64, 64) if kind == "autoencoder" else torch.rand(8, 64, 64, 64)).contiguous(memory_format=torch.channels_last)
        net.requires_grad_(kind == "autoencoder"), x.requires_grad_(kind == "vgg")  # VGG passes gradients to its input only
        times = {False: [], True: []}
        for bf16 in [False, True] * 7:
            start = time.perf_counter()
            with autocast(torch.device("cpu"), bf16):
                out = net(x)
            out.float().square().mean().backward()
            times[bf16].append(time.perf_counter() - start)
        return min(times[False][2:]) / min(times[True][2:])


def add_precision_arg(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--precision", default=default, choices=PRECISIONS,
                        help="arithmetic of the forward pass (weights, optimiser stay fp32): fp32; bf16-vgg (bfloat16 inside the perceptual "
                             "loss's VGG only); bf16 (the whole pass); auto (where bf16 is native and measures faster: bf16-vgg for the "
                             "perceptual loss, bf16 for the others; else fp32)")


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on `device` when enabled (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass(frozen=True)
class Objective:
    """What a loss group minimises: `loss_fn`(reconstruction, clean image) where the model sees the image
    with Gaussian noise of std `noise` added and clipped to [0, 1] (denoising), plus `l1` times the mean
    |code| of the bottleneck (sparse). noise = l1 = 0 is the plain autoencoder."""
    loss_fn: Callable
    noise: float = 0.0
    l1: float = 0.0

    def inputs(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """What the model sees of the clean batch `x`; the noise comes from `generator` (CPU), never the global RNG."""
        if not self.noise:
            return x
        if generator is None:
            raise ValueError("a denoising objective needs a generator for its noise")
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return (x + self.noise * noise).clamp_(0, 1).contiguous(memory_format=_format_of(x))


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def as_objective(loss: Callable | Objective) -> Objective:
    """A plain loss function is the objective without noise or L1."""
    return loss if isinstance(loss, Objective) else Objective(loss)


def make_loss(name: str, vgg_weights: str = "imagenet", vgg_layers: tuple[str, ...] = ae.VGG_DEFAULT_LAYERS, device=None):
    """The training loss by name: a callable (recon, target, reduction='mean') -> tensor; the perceptual loss's VGG16
    weights are imagenet, random or a file (lib/vgg.py, imported only for it), on `device` (None: the CPU)."""
    if name == "mse":
        return ae.mse
    if name != "perceptual":
        raise UserError(f"unknown loss {name!r}; choose one of {', '.join(ae.LOSSES)}")
    vgg = cli.optional("vgg", "--loss perceptual")
    try:
        loss = ae.PerceptualLoss(vgg.vgg16_features(vgg_weights), tuple(vgg_layers), vgg.vgg_weights_name(vgg_weights))
    except ValueError as e:
        raise UserError(str(e)) from None
    return loss.to(device or "cpu", memory_format=torch.channels_last)


def objective_from_config(config: dict, vgg_file: str | None = None, device: torch.device | None = None) -> Objective:
    """The objective a checkpoint was trained with (loss, noise, L1), rebuilt from its config, its loss on `device`.
    An endpoint trained with VGG16 weights from a file records only the file's name: `vgg_file` must point to it again."""
    loss_fn = ae.mse
    if config.get("loss") != "mse":
        weights = config.get("vgg_weights") or "imagenet"
        if weights.startswith("file:"):
            name = weights[len("file:"):]
            if vgg_file is None or Path(vgg_file).name != name:
                raise UserError(f"this perceptual loss used the VGG16 weight file {name}; pass it again with --vgg-weights PATH")
            weights = vgg_file
        loss_fn = make_loss(config.get("loss"), weights, tuple(config.get("vgg_layers") or ae.VGG_DEFAULT_LAYERS), device)
    return Objective(loss_fn, **ae.variant_settings(config))


def forward_loss(model: nn.Module, x: torch.Tensor, loss_fn: Callable | Objective, precision: str, device: torch.device,
                 model_kwargs: dict | None = None, generator: torch.Generator | None = None, with_code: bool = False,
                 **loss_kwargs):
    """The reconstruction of `x` and its objective at `precision` (see add_precision_arg), both in fp32;
    `generator` draws a denoising objective's noise. With `with_code` also the code (None without L1)."""
    objective = as_objective(loss_fn)
    kwargs = dict(model_kwargs or {}, **({"with_code": True} if objective.l1 else {}))
    with autocast(device, precision == "bf16"):
        out = model(objective.inputs(x, generator), **kwargs)
    recon, code = (out[0].float(), out[1].float()) if objective.l1 else (out.float(), None)
    with autocast(device, precision in ("bf16", "bf16-vgg")):
        loss = objective.loss_fn(recon, x, **loss_kwargs)
    loss = loss.float()
    if objective.l1:
        per_image = code.abs().mean(dim=1)
        loss = loss + objective.l1 * (per_image if loss_kwargs.get("reduction") == "none" else per_image.mean())
    return (recon, loss, code) if with_code else (recon, loss)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size)


def schedule_rates(schedule: str, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """The rate at each global optimiser step (counted over all epochs), as Step's `lr_at`: a function of the
    step's index alone, so a resumed run follows the schedule exactly."""
    return lambda step: base_lr * lr_factor(schedule, step, total_steps)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch (data order, and t for curves): a function of seed and epoch
    alone, so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


FEATURE_CACHE_BYTES = 2 * 2**30  # keep the VGG features of fixed targets when they fit in this


def target_feature_cache(loss_fn: Callable | Objective, images: torch.Tensor, *, batch_size: int, device: torch.device,
                         precision: str = "fp32") -> list[torch.Tensor] | None:
    """The perceptual loss's VGG features of every clean image in `images` (one tensor per layer, on the CPU, in the
    dtype `precision` computes them in), so that training spares the target half of the VGG work at every step; None
    for another loss, or when they would not fit in FEATURE_CACHE_BYTES."""
    loss = as_objective(loss_fn).loss_fn
    if not isinstance(loss, ae.PerceptualLoss) or len(images) == 0:
        return None
    with torch.inference_mode(), autocast(device, precision in ("bf16", "bf16-vgg")):
        one = loss.features(next(batches(images[:1], 1, device=device, memory_format=torch.channels_last)))
        if sum(f.numel() * f.element_size() for f in one) * len(images) > FEATURE_CACHE_BYTES:
            return None
        parts = [loss.features(x) for x in batches(images, batch_size, device=device, memory_format=torch.channels_last)]
    return [torch.cat([part[i].cpu() for part in parts]).contiguous(memory_format=torch.channels_last) for i in range(len(one))]


@dataclass
class Step:
    """One optimisation step of train_epoch: the objective of a batch at `precision` (resolved, see
    resolve_precision), backward, and an update of `optimizer` at rate lr_at(global step), the steps counted over
    all epochs (None: the optimizer's own rate). For a CurveNet, `t_of(step in the epoch, u)` is the batch's t,
    with u ~ U(0, 1) drawn from the epoch's generator (the paper's stochastic estimate of E_t L(phi(t)); e.g.
    curves.ArcLengthSampler); None trains a plain model. `target_features` (target_feature_cache of the training
    images) are the perceptual loss's targets, looked up instead of recomputed. `penalty(model)` is added to the loss
    optimised but not to the training loss reported (the simplex's volume term, the subspace line's cosine term)."""
    objective: Objective
    optimizer: torch.optim.Optimizer
    device: torch.device
    batch_size: int
    precision: str = "fp32"
    lr_at: Callable[[int], float] | None = None
    t_of: Callable[[int, float], float] | None = None
    target_features: list[torch.Tensor] | None = None
    penalty: Callable[[nn.Module], torch.Tensor] | None = None


def train_epoch(model: nn.Module, images: torch.Tensor, step: Step, *, generator: torch.Generator, epoch: int,
                max_steps: int | None = None, after_step: Callable[[int], None] | None = None, desc: str = "train") -> float:
    """One pass over `images` in the generator's order (or its first `max_steps` batches) of `step`; returns the
    mean training loss. `after_step(i)` runs right after the optimiser update of the epoch's step i (0-based), e.g.
    to save the weights there (train_ae.py --snapshots). A non-finite loss raises a UserError naming the step."""
    model.train()
    total, count = 0.0, 0
    per_epoch = steps_per_epoch(len(images), step.batch_size)
    steps = per_epoch if max_steps is None else min(per_epoch, max_steps)
    order = batch_indices(len(images), step.batch_size, shuffle=True, generator=generator)
    bar = tqdm(order, total=steps, desc=f"{desc} epoch {epoch + 1}", leave=False, disable=None, dynamic_ncols=True)
    for i, index in enumerate(bar):
        if i == steps:
            break
        x = to_batch(images[index], step.device, torch.channels_last)
        cached = {} if step.target_features is None else {"target_features": [
            f[index].to(step.device, non_blocking=True).contiguous(memory_format=torch.channels_last) for f in step.target_features]}
        if step.lr_at is not None:
            for group in step.optimizer.param_groups:
                group["lr"] = step.lr_at(epoch * per_epoch + i)
        at = {} if step.t_of is None else {"t": step.t_of(i, torch.rand((), generator=generator).item())}
        _, loss = forward_loss(model, x, step.objective, step.precision, step.device, at, generator=generator, **cached)
        value = loss.item()
        if not math.isfinite(value):
            lr = step.optimizer.defaults["lr"]  # the base rate (--lr); a schedule may have lowered the current one
            # not "--resume with a lower --lr": load_resume refuses a changed lr, so the advice is to start over
            raise UserError(f"training diverged: loss is {value} at epoch {epoch + 1}, step {i + 1}; the learning "
                            f"rate {lr:g} is too high for this data: rerun without --resume and with --lr {lr / 10:g}")
        loss = loss if step.penalty is None else loss + step.penalty(model)
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step.optimizer.step()
        total += value * len(x)
        count += len(x)
        if after_step is not None:
            after_step(i)
        bar.set_postfix(loss=f"{value:.4g}")
    return total / max(count, 1)


def without_timing(history: list[dict]) -> list[dict]:
    """The history without wall-clock seconds, for checkpoints: the same seed and flags then give
    byte-identical files (the seconds stay in the JSON and on the console). Keys are interned: pickle
    memoises strings by identity, so keys read back from a resume file would otherwise change the bytes."""
    return [{sys.intern(k): v for k, v in entry.items() if k != "seconds"} for entry in history]


def resume_path(out: str | Path) -> Path:
    """Where a run writing `out` keeps its per-epoch resume state."""
    out = Path(out)
    return out.with_name(out.stem + ".resume.pt")


def save_resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list, config: dict) -> None:
    """Everything needed to continue after `epoch` (0-based, completed) exactly, written atomically."""
    save_checkpoint(path, files.RESUME_FORMAT, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "history": history, "config": config, "rng": torch.get_rng_state()})


def load_resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> tuple[int, list]:
    """Restore a resume state into `model` and `optimizer`; returns (next epoch, history)."""
    state = load_checkpoint(path, files.RESUME_FORMAT, ("model", "optimizer", "epoch", "history", "config", "rng"))
    if not plain_equal(state["config"], config):
        saved = state["config"] if isinstance(state["config"], dict) else {}
        changed = sorted((k for k in set(config) | set(saved) if not plain_equal(config.get(k), saved.get(k))), key=str)
        raise UserError(f"{path} was started with different settings ({', '.join(map(str, changed))}); "
                        f"rerun with the same flags, or without --resume to start over")
    try:
        epoch, history = state["epoch"], list(state["history"])
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch is {epoch!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(optimizer)
        torch.set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"{path} does not match this model ({reason}); delete it to start over") from None
    return epoch + 1, history


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError unless every per-parameter state is a float tensor shaped like its parameter
    (or a scalar, like Adam's step): load_state_dict accepts anything, and the next step would fail."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if value is None:
                    continue
                if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape not in (p.shape, ()):
                    raise ValueError(f"optimizer state {name!r} does not fit a parameter of shape {tuple(p.shape)}")


# ---------------------------------------------------------------- evaluation

CURVE_DIR = Path("runs/curves")  # where fit_curve.py writes curves by default
METRICS = ("train_loss", "test_loss", "train_mse", "test_mse")
CONVERGED_DROP = 0.05  # a fit whose test loss at t=0.5 still fell by more than this over its last quarter is not converged


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of a 1-d tensor."""
    values = values.double()
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return values.mean().item(), se


EVAL_NOISE_SEED = 20180227  # evaluation noise: fixed per image position, the same at every t, on every path
NEAR_ZERO = 0.1  # a code unit is near zero when |z| is below this fraction of the image's mean |z|


def eval_noise_generator(first: int) -> torch.Generator:
    """The noise stream of the evaluation batch whose first image is image `first` of its subset: with a fixed
    batch size, every image gets the same noise at every t and on every path, so paired errors stay paired."""
    return torch.Generator().manual_seed(EVAL_NOISE_SEED + first)


@dataclass(frozen=True)
class Quality:
    """Per-image quality of the reconstructions of the first `images` clean test images (None: all): PSNR and SSIM
    (torchmetrics: 11x11 Gaussian window, data range 1) and, given `lpips` (lib/vgg.py), LPIPS named `lpips_name`."""
    images: int | None = None
    lpips: Callable | None = None
    lpips_name: str = "lpips"

    def names(self) -> tuple[str, ...]:
        return ("psnr", "ssim", *((self.lpips_name,) if self.lpips else ()))

    def values(self, recon: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure  # 1.5 s to import

        return {"psnr": peak_signal_noise_ratio(recon, x, data_range=1.0, reduction="none", dim=(1, 2, 3)),
                "ssim": structural_similarity_index_measure(recon, x, data_range=1.0, reduction="none"),
                **({self.lpips_name: self.lpips(recon, x)} if self.lpips else {})}


@torch.inference_mode()
def per_image_losses(model: nn.Module, images: torch.Tensor, loss_fn: Callable | Objective, *, batch_size: int,
                     device: torch.device, t: float | None = None, memory_format=torch.channels_last,
                     target_features: list | None = None, precision: str = "fp32",
                     quality: Quality | None = None) -> dict[str, torch.Tensor]:
    """Per-image objective ("loss", on noisy inputs for a denoising objective) and MSE on clean inputs of `model`
    (in eval mode) on `images`; for a sparse objective also "code_abs" (mean |code|) and "code_zero" (the
    fraction of units near zero, see NEAR_ZERO); with `quality`, its metrics of the first quality.images images.
    `target_features` (one entry per batch, from `ae.PerceptualLoss.features`) spares recomputing VGG features of
    the same targets at every t."""
    objective = as_objective(loss_fn)
    plain = objective.loss_fn is ae.mse and not objective.l1  # the loss is the MSE of its reconstruction
    was_training = model.training
    model.eval()
    kwargs = {} if t is None else {"t": t}
    out = {name: [] for name in ("loss", "mse", *(("code_abs", "code_zero") if objective.l1 else ()), *(quality.names() if quality else ()))}
    for i, x in enumerate(batches(images, batch_size, device=device, memory_format=memory_format)):
        extra = {} if target_features is None or objective.loss_fn is ae.mse else {"target_features": target_features[i]}
        recon, value, code = forward_loss(model, x, objective, precision, device, kwargs, reduction="none", with_code=True,
                                          generator=eval_noise_generator(i * batch_size), **extra)
        out["loss"].append(value.cpu())
        if objective.noise:  # the reconstruction of the clean image
            with autocast(device, precision == "bf16"):
                recon = model(x, **kwargs).float()
        out["mse"].append(value.cpu() if plain and not objective.noise else ae.mse(recon, x, reduction="none").cpu())
        if objective.l1:
            size = code.abs().mean(dim=1, keepdim=True)
            out["code_abs"].append(size.squeeze(1).cpu())
            out["code_zero"].append((code.abs() < NEAR_ZERO * size).float().mean(dim=1).cpu())
        k = len(x) if quality is None or quality.images is None else min(len(x), quality.images - i * batch_size)
        if quality and k > 0:
            for name, value in quality.values(recon[:k].clamp(0, 1), x[:k]).items():
                out[name].append(value.reshape(k).cpu())
    model.train(was_training)
    return {name: torch.cat(values) for name, values in out.items()}


def evaluate(model: nn.Module, images: torch.Tensor, loss_fn: Callable, **kwargs) -> dict[str, float]:
    """Mean and standard error of the loss and the MSE, and the PSNR of the mean MSE."""
    values = per_image_losses(model, images, loss_fn, **kwargs)
    loss, loss_se = mean_and_se(values["loss"])
    sq, sq_se = mean_and_se(values["mse"])
    return {"loss": loss, "loss_se": loss_se, "mse": sq, "mse_se": sq_se, "psnr": ae.psnr(sq)}


ESTIMATORS = ("control-variates", "subset")
ANCHORS = (0.5,)  # besides the ends; values measured in docs/experiments.md (control-variate evaluation)
EVAL_SUBSETS = {"bn_images": 1000, "train_images": 1000, "test_images": 1000}  # images from files: BatchNorm needs 1,000
SYNTHETIC_SUBSETS = {"bn_images": 250, "train_images": 250, "test_images": 250}  # within 0.5% of exhaustive, 24x faster (bench.py)


def fill_subsets(args: argparse.Namespace, dataset: str) -> None:
    """The subset flags left unset (None): SYNTHETIC_SUBSETS on the synthetic faces, else EVAL_SUBSETS (docs/performance.md)."""
    for key, value in (SYNTHETIC_SUBSETS if dataset == "synthetic" else EVAL_SUBSETS).items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))


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
    """VGG features of the fixed evaluation images (target_feature_cache, in fp32), cut into the evaluation's batches
    and computed once for all t and every path (the perceptual loss's targets never change); None per split for
    another loss, or when they would not fit in memory."""
    out = {}
    for split, images in split_images.items():
        cache = target_feature_cache(loss_fn, images, batch_size=batch_size, device=device)
        out[split] = None if cache is None else [[f[i:i + batch_size].to(device) for f in cache] for i in range(0, len(images), batch_size)]
    return out


def recompute_bn(net: torch.nn.Module, bn_images: torch.Tensor, noise: float, *, batch_size: int, device: torch.device,
                 t: float | None = None) -> None:
    """BatchNorm statistics of `net` (for a CurveNet, at t) recomputed as the exact mean over `bn_images` as the
    network sees them in training: with a denoising group's Gaussian noise of std `noise` (the fixed evaluation
    noise, eval_noise_generator), clean for every other group. This is the one rule for every evaluation
    (eval_curve, plane, ensemble, function_space, the probes, the fits' t = 0.5 check): the running statistics of a
    trained endpoint estimate exactly these inputs, so at t = 0 and 1 the recomputation gives back the network as
    trained, and whatever is measured after it (the objective, the MSE of clean images, codes, reconstructions) is
    measured on that network rather than on one normalised for inputs it never saw."""
    curves.update_bn(net, seen_batches(bn_images, noise, batch_size=batch_size, device=device), t=t)


def seen_batches(images: torch.Tensor, noise: float, *, batch_size: int, device: torch.device):
    """The batches of `images` as a group's network sees them in evaluation: with its fixed noise of std `noise`."""
    objective = Objective(ae.mse, noise)  # only its inputs matter here
    for i, x in enumerate(batches(images, batch_size, device=device, memory_format=torch.channels_last)):
        yield objective.inputs(x, eval_noise_generator(i * batch_size))


def evaluate_point(net: torch.nn.Module, split_images: dict, loss_fn, *, bn_images: torch.Tensor, batch_size: int,
                   device: torch.device, t: float | None = None, features: dict | None = None,
                   precision: str = "fp32", quality: Quality | None = None) -> dict[str, torch.Tensor]:
    """BatchNorm statistics recomputed (for a CurveNet, at t) on the inputs the objective sees, then the per-image
    values of every split: {"train_loss": tensor, "train_mse": ..., "test_loss": ..., "test_mse": ...}, for a
    sparse objective also "<split>_code_abs" and "<split>_code_zero", with `quality` "test_psnr", "test_ssim" ..."""
    recompute_bn(net, bn_images, as_objective(loss_fn).noise, batch_size=batch_size, device=device, t=t)
    out = {}
    for split, images in split_images.items():
        values = per_image_losses(net, images, loss_fn, batch_size=batch_size, device=device, t=t,
                                  target_features=(features or {}).get(split), precision=precision,
                                  quality=quality if split == "test" else None)
        out.update({f"{split}_{name}": value for name, value in values.items()})
    return out


def anchor_values(paths: dict, anchor_ts: list[float], population: dict, loss_fn, *, bn_images: torch.Tensor, batch_size: int,
                  device: torch.device, precision: str = "fp32", quality: Quality | None = None) -> dict[str, dict[float, dict]]:
    """The control variates: per path, at every anchor t, the per-image values of evaluate_point on every image
    of each split in `population` (with `quality`, its metrics of every test image). A network met on several paths (the curve's and the segment's ends are the
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
                                    features=features, precision=precision, quality=quality and replace(quality, images=None))
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
                  features: dict | None = None, precision: str = "fp32", anchors: dict | None = None,
                  quality: Quality | None = None) -> dict:
    """Losses (mean and standard error) at every t, the length element, and reconstructions at `columns`;
    for a sparse objective also the code statistics of evaluate_point at every t (summarised only for METRICS and
    `quality`'s metrics, for which `anchors` must hold them: anchor_values with the same `quality`).

    Without `anchors`, the means of the subsets `split_images`. With `anchors` (this path's entry of
    anchor_values: {t: per-image values on every image of each split}), the control-variate estimator: at an
    anchor, the whole split's mean; elsewhere the subsets' means corrected by control_variate_mean, with
    "<name>_se_subset" (the error against the whole split's mean) and "<name>_r2" beside "<name>_se"."""
    out = {name: [] for name in METRICS}
    out.update({f"{name}_se": [] for name in METRICS})
    out["dl"], out["estimator"], recon, previous = [], [], [], None
    per_image, population = {}, None
    summarised = [*METRICS, *(f"test_{name}" for name in (quality.names() if quality else ()))]
    if anchors:
        population = {split: len(next(iter(anchors.values()))[f"{split}_loss"]) for split in split_images}
        sizes = {name: min(len(split_images[split_of(name)]), quality.images or math.inf) if name in summarised[len(METRICS):]
                 else len(split_images[split_of(name)]) for name in next(iter(anchors.values()))}
    net.eval()
    for i, t in enumerate(tqdm(ts, desc=desc, leave=False, disable=None, dynamic_ncols=True)):
        anchor = anchor_at(anchors, t)
        if anchor is None:
            values = evaluate_point(net, split_images, loss_fn, bn_images=bn_images, batch_size=batch_size, device=device, t=t,
                                    features=features, precision=precision, quality=quality)
            values = {name: value.double().numpy() for name, value in values.items()}
        else:  # its first images are the subsets' values
            values = {name: full[: sizes[name]] for name, full in anchors[anchor].items()}
            if i in columns:  # the reconstructions below need the statistics at this t
                recompute_bn(net, bn_images, as_objective(loss_fn).noise, batch_size=batch_size, device=device, t=t)
        out["estimator"].append("subset" if not anchors else "anchor" if anchor is not None else "control-variates")
        for name, value in values.items():
            if not anchors:
                mean, se = mean_and_se(torch.from_numpy(value))
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
                                      subset_se=out.get(f"{name}_se_subset")) for name in summarised}
    return out, torch.stack(recon) if recon else None


def check_compatible(config_a: dict, config_b: dict) -> None:
    """Refuse endpoints that cannot be joined by one curve, naming what differs."""
    for key, what in (("loss", "loss"), ("noise", "input noise (--noise)"), ("l1", "code L1 weight (--l1)"),
                      ("vgg_weights", "VGG16 weights of the perceptual loss"),
                      ("vgg_layers", "VGG16 layers of the perceptual loss")):
        a, b = (ae.variant_settings(c)[key] if key in ("noise", "l1") else c.get(key) for c in (config_a, config_b))
        if a != b:
            raise UserError(f"endpoints were trained with different {what} ({a} vs {b}); "
                            f"connect two endpoints of the same loss group")
    for key in ("arch", "latent_dim", "width"):
        if config_a["model"].get(key) != config_b["model"].get(key):
            raise UserError(f"endpoints have different {key.replace('_', ' ')} ({config_a['model'].get(key)} vs "
                            f"{config_b['model'].get(key)}); train both with the same --latent-dim and --width")


def convergence(history: list[dict]) -> dict:
    """How much the test loss at t=0.5 fell over the last quarter of the fit's epochs (at least one):
    a fit still falling by more than CONVERGED_DROP there stopped before its loss settled."""
    values = [h["test_loss_t05"] for h in history]  # epoch 0 (the linear initialisation), 1, ..., E
    quarter = max(1, round((len(values) - 1) / 4))
    first, last = values[-1 - quarter], values[-1]
    drop = (first - last) / first if first > 0 else 0.0
    return {"last_quarter_epochs": quarter, "last_quarter_drop": drop, "converged": drop <= CONVERGED_DROP}


LOSS_NAMES = {"mse": "MSE", "perceptual": "perceptual loss (VGG16)"}  # in figures
PATH_STYLES = {"curve": "-", "segment": "--", "aligned_segment": ":"}  # the aligned segment only where eval_curve --aligned ran


def pair_label(result: dict) -> str:
    """An evaluated pair in words: its endpoints' seeds when known, else their file names."""
    seeds = result.get("endpoint_seeds") or [None, None]
    if None in seeds:
        return " – ".join(Path(p).stem for p in result["endpoints"])
    return f"seeds {seeds[0]}–{seeds[1]}"
