"""The loops that train and evaluate models, shared by train_ae.py and fit_curve.py: one epoch of
training, evaluation with standard errors, and the resume state written after every epoch."""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

import ae
from data import batch_indices, batches, to_batch
from lib.files import CheckpointError, UserError, load_checkpoint, plain_equal, save_checkpoint

RESUME_FORMAT = "aemc-resume-v1"
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


BF16_MIN_SPEEDUP = 1.2  # a CPU counts as fast in bf16 when VGG's first-block convolution runs this much faster in it


def bf16_fast(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively and fast: a CUDA GPU that supports it, or a CPU with AVX-512 BF16
    or AMX on which a VGG convolution measures faster in bf16 (cpu_bf16_speedup): native support alone does not
    make it so (README, Performance)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch.cpu's checks are private: missing ones count as no
        native = any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return native and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    return False


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 autocast time of a convolution like VGG16's relu1_2 (64 -> 64 channels, 3x3, on 64x64 maps,
    channels_last, batch 8), the best of 3 runs each; measured once per process, leaving torch's RNG untouched."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(8, 64, 64, 64).contiguous(memory_format=torch.channels_last)

        def best(bf16: bool) -> float:
            times = []
            for _ in range(4):  # the first is a warm-up
                with autocast(torch.device("cpu"), bf16):
                    start = time.perf_counter()
                    conv(x)
                    times.append(time.perf_counter() - start)
            return min(times[1:])

        return best(False) / best(True)


def resolve_precision(precision: str, device: torch.device, loss: str) -> str:
    """`auto` is bf16 for the perceptual loss's VGG where the device computes bf16 natively and fast (its
    accuracy cost was measured below the spread between seeds, see README), fp32 otherwise."""
    if precision != "auto":
        return precision
    return "bf16-vgg" if loss == "perceptual" and bf16_fast(device) else "fp32"


def add_precision_arg(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--precision", default=default, choices=PRECISIONS,
                        help="arithmetic of the forward pass (weights and optimiser stay fp32): fp32; bf16-vgg (autocast to bfloat16 "
                             "inside the perceptual loss's VGG only); bf16 (the whole forward pass); auto (bf16-vgg for the perceptual "
                             "loss where the GPU or CPU has native bf16 and a VGG convolution measures faster in it, else fp32)")


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


def objective_from_config(config: dict, vgg_file: str | None = None, device: torch.device | None = None) -> Objective:
    """The objective a checkpoint was trained with, its loss on `device` (see ae.loss_from_config)."""
    loss_fn = ae.loss_from_config(config, vgg_file)
    if isinstance(loss_fn, nn.Module) and device is not None:
        loss_fn = loss_fn.to(device, memory_format=torch.channels_last)
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


def epoch_rates(schedule: str, base_lr: float, epoch: int, per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The rate of each step of `epoch` (0-based, `per_epoch` steps each), as train_epoch's `lr_at`: a
    function of the step's global index alone, so a resumed run follows the schedule exactly."""
    return lambda step: base_lr * lr_factor(schedule, epoch * per_epoch + step, per_epoch * epochs)


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


def train_epoch(model: nn.Module, images: torch.Tensor, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
                batch_size: int, generator: torch.Generator, device: torch.device, epoch: int,
                sample_t: bool = False, t_of: Callable[[float], float] | None = None,
                before_step: Callable[[int], None] | None = None, after_step: Callable[[int], None] | None = None,
                lr_at: Callable[[int], float] | None = None, max_steps: int | None = None, precision: str = "fp32",
                memory_format=torch.channels_last, desc: str = "train",
                target_features: list[torch.Tensor] | None = None) -> float:
    """One pass over `images` in the generator's order (or its first `max_steps` batches); returns
    the mean training loss.

    `lr_at(step)` sets the rate of every parameter group before each step (see `epoch_rates`).
    `before_step(step)` runs before step `step` (0-based) and `after_step(step)` right after its
    optimiser update, e.g. to save the weights there (train_ae.py --snapshots).
    `loss_fn` is a loss function or an Objective, whose noise is drawn from `generator` after t.
    With `sample_t`, the model is a CurveNet and one t ~ U(0,1) is drawn per batch (the paper's
    stochastic estimate of E_t L(phi(t))), or t = t_of(u) with u ~ U(0,1) (e.g. curves.ArcLengthSampler). `precision` is resolved (no 'auto'; see
    resolve_precision). `target_features` (target_feature_cache of `images`) are the perceptual loss's
    targets, looked up instead of recomputed. A non-finite loss raises a UserError naming the step.
    """
    model.train()
    total, count = 0.0, 0
    steps = steps_per_epoch(len(images), batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    bar = tqdm(batch_indices(len(images), batch_size, shuffle=True, generator=generator),
               total=steps, desc=f"{desc} epoch {epoch + 1}", leave=False, disable=None, dynamic_ncols=True)
    for step, index in enumerate(bar):
        if step == steps:
            break
        x = to_batch(images[index], device, memory_format)
        cached = {} if target_features is None else {
            "target_features": [f[index].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last) for f in target_features]}
        if before_step is not None:
            before_step(step)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        kwargs = {}
        if sample_t:
            u = torch.rand((), generator=generator).item()
            kwargs["t"] = u if t_of is None else t_of(u)
        _, loss = forward_loss(model, x, loss_fn, precision, device, kwargs, generator=generator, **cached)
        value = loss.item()
        if not math.isfinite(value):
            lr = optimizer.defaults["lr"]  # the base rate (--lr); a schedule may have lowered the current one
            # not "--resume with a lower --lr": load_resume refuses a changed lr, so the advice is to start over
            raise UserError(f"training diverged: loss is {value} at epoch {epoch + 1}, step {step + 1}; the learning "
                            f"rate {lr:g} is too high for this data: rerun without --resume and with --lr {lr / 10:g}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * len(x)
        count += len(x)
        if after_step is not None:
            after_step(step)
        bar.set_postfix(loss=f"{value:.4g}")
    return total / max(count, 1)


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


def objective_batches(loss_fn: Callable | Objective, batches_of: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """The batches as the objective's model sees them in evaluation (with its fixed noise), e.g. for
    curves.update_bn: a denoising model's BatchNorm statistics are those of noisy inputs."""
    objective = as_objective(loss_fn)
    for i, x in enumerate(batches_of):
        yield objective.inputs(x, eval_noise_generator(i * batch_size))


@torch.inference_mode()
def per_image_losses(model: nn.Module, images: torch.Tensor, loss_fn: Callable | Objective, *, batch_size: int,
                     device: torch.device, t: float | None = None, memory_format=torch.channels_last,
                     target_features: list | None = None, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """Per-image objective ("loss", on noisy inputs for a denoising objective) and MSE on clean inputs of `model`
    (in eval mode) on `images`; for a sparse objective also "code_abs" (mean |code|) and "code_zero" (the
    fraction of units near zero, see NEAR_ZERO). `target_features` (one entry per batch, from
    `ae.PerceptualLoss.features`) spares recomputing VGG features of the same targets at every t."""
    objective = as_objective(loss_fn)
    plain = objective.loss_fn is ae.mse and not objective.l1  # the loss is the MSE of its reconstruction
    was_training = model.training
    model.eval()
    kwargs = {} if t is None else {"t": t}
    out = {name: [] for name in ("loss", "mse", *(("code_abs", "code_zero") if objective.l1 else ()))}
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
    model.train(was_training)
    return {name: torch.cat(values) for name, values in out.items()}


def evaluate(model: nn.Module, images: torch.Tensor, loss_fn: Callable, **kwargs) -> dict[str, float]:
    """Mean and standard error of the loss and the MSE, and the PSNR of the mean MSE."""
    values = per_image_losses(model, images, loss_fn, **kwargs)
    loss, loss_se = mean_and_se(values["loss"])
    sq, sq_se = mean_and_se(values["mse"])
    return {"loss": loss, "loss_se": loss_se, "mse": sq, "mse_se": sq_se, "psnr": ae.psnr(sq)}


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
    save_checkpoint(path, RESUME_FORMAT, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "history": history, "config": config, "rng": torch.get_rng_state()})


def load_resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> tuple[int, list]:
    """Restore a resume state into `model` and `optimizer`; returns (next epoch, history)."""
    state = load_checkpoint(path, RESUME_FORMAT, ("model", "optimizer", "epoch", "history", "config", "rng"))
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
