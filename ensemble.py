"""Ensembles along a curve, and fast geometric ensembling (FGE), against honest baselines:
`python ensemble.py --ckpt CURVE --endpoints A B C --out DIR`.

An ensemble of autoencoders reconstructs an image as the mean of its members' reconstructions,
and is scored by the group's loss (and the MSE) of that mean. Every member's BatchNorm
statistics are recomputed on the same first --bn-images training images before it is used.

Methods (Garipov et al. 2018, Section 5 and Figure 2c), each with its training budget in epochs:
  curve      (a) Figure 2c: the pair {phi(0), phi(t)} against phi(t) alone, for --points values
             of t; (b) K points t = i/(K-1), i = 0..K-1, endpoints INCLUDED, so K=2 is exactly the
             two-endpoint ensemble and what the curve adds on top of its endpoints is read off
             directly (the endpoints are paid for in the curve's budget anyway).
             Budget: both endpoints' epochs + the curve's epochs.
  fge        Algorithm 1 of the paper from endpoint --fge-from: Adam whose rate follows the
             triangular cycle from --fge-lr1 (high) down to --fge-lr2 (low, at mid-cycle) and back,
             one model collected at the middle of each cycle, where the rate is lowest.
             Budget: the endpoint's epochs + the FGE steps (in epochs).
  sse        snapshot ensemble (Huang et al. 2017) from the same endpoint, same steps and cycles:
             cosine rate from --fge-lr1 to ~0 in each cycle, one model collected at its end.
  longer     the same endpoint trained on with its own constant Adam rate for as many steps as
             FGE took: what the extra budget buys a single model.
  endpoints  the independently trained --endpoints as ensembles of 1, 2, 3... members.
             Budget: the sum of the members' own epochs.
  complex    with --complex (simplex.py): ESPRO of Benton et al. 2021, K = --k uniform samples of the
             mode-connecting complex (a simplex uniformly, a Dirichlet(1) point in it; seed fixed).
             Budget: the complex's endpoints' epochs + the complex's epochs.
FGE, SSE and longer training see the same batches: the endpoint's own data order, continued.

Optimiser: Adam, not the paper's SGD. The endpoints were trained with Adam, so its learning-rate
scale is known (the endpoint's rate is the default high rate), and the 'trained longer' baseline
uses the endpoint's own schedule, so FGE differs from it only in the rate schedule and in
collecting. Adam's moments start afresh: the endpoint checkpoints do not keep them.

Diversity, next to every ensemble: the mean over pairs of members of the mean squared difference
per pixel between their test reconstructions, and the mean pairwise cosine similarity and RMS
distance of their flattened weight vectors (Fort et al. 2019). Averaging the members' latent
codes is not reported: independently trained encoders share no coordinates.
Chosen ensembles (--select; Fort et al. 2019 ask which members make the best ensemble): from a
pool of the endpoints, the curve at --pool-points values of t and the FGE members, K = --k
members are chosen on validation images alone (the dataset's validation split; a folder tree's
last training images), then scored on the test images: uniform (evenly spaced t, as above),
greedy (each step adds the member that lowers the ensemble's validation loss most), diversity
(each step adds the member maximising -loss/L0 + lambda * mean disagreement with those chosen/D0,
for every --lambdas; L0 and D0 are the pool's mean validation loss and MSE, so lambda is unitless).
Differences to uniform are paired over the test images.

Writes <out>/ensemble.json (format aemc-ensemble-v1, with a Table-1-like list of rows),
<out>/members.png (loss, MSE, PSNR vs members per method), <out>/fig2c.png, the FGE members as
autoencoder checkpoints <out>/fge/member<N>.pt, and with --select <out>/selection.png (test loss
against diversity of every chosen ensemble, uniform and the independent endpoints marked).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import time
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import ae  # noqa: E402
from lib import cli  # noqa: E402
import curves  # noqa: E402
import data  # noqa: E402
from lib import images as image_files  # noqa: E402
from lib import complexes, training  # noqa: E402
from lib.training import newest_curve, paired_se, recompute_bn, target_features  # noqa: E402
from lib.files import (ENSEMBLE_FORMAT, UserError, ensure_dir, file_sha256, load_ae, load_curve, save_ae, save_figure,  # noqa: E402
                       write_json)

DEFINITION = ("ensemble reconstruction = mean of the members' reconstructions; its loss is the group's loss (and MSE) of "
              "that mean; each member's BatchNorm statistics are recomputed on the same training images first")
METHODS = {"endpoints": "independent endpoints", "curve": "curve points (ends incl.)", "fge": "FGE",
           "sse": "snapshot ensemble", "longer": "single, trained longer", "complex": "samples of the complex (ESPRO)"}
COMPLEX_SEED = 0  # the complex's members: the same points on every run
CHANNELS_LAST = torch.channels_last


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--ckpt", default=None, help="curve checkpoint from fit_curve.py (default: the newest in runs/curves)")
    p.add_argument("--endpoints", nargs="+", default=None, metavar="CKPT",
                   help="independently trained endpoints of the curve's group, ensembled in this order (default: the curve's two)")
    p.add_argument("--fge-from", "--a", dest="fge_from", default=None,
                   help="endpoint that FGE, SSE and longer training start from (default: the first of --endpoints)")
    p.add_argument("--complex", default=None, metavar="CKPT",
                   help="also ensemble --k uniform samples of this mode-connecting complex (simplex.py; ESPRO, Benton et al. 2021)")
    p.add_argument("--points", type=cli.at_least_two, default=21, help="values of t in [0, 1] for Figure 2c")
    p.add_argument("--k", type=cli.at_least_two, default=5, help="points on the curve for its ensemble, at t = i/(k-1), ends included")
    p.add_argument("--select", nargs="+", choices=SELECTIONS, default=(), metavar="RULE",
                   help="also choose --k members from a pool (the endpoints, the curve at --pool-points values of t, the FGE "
                        "members) on validation images only, then score them on test: uniform (evenly spaced t, ends incl.), "
                        "greedy (add the member that lowers the ensemble's validation loss most), diversity (add the member "
                        "maximising -loss/L0 + lambda * mean disagreement with the chosen/D0, for each --lambdas); "
                        f"choose from {', '.join(SELECTIONS)} (default: none)%(default).0s")
    p.add_argument("--lambdas", type=cli.nonnegative_float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0], metavar="LAMBDA",
                   help="weights of diversity for --select diversity (unitless: L0 and D0 are the pool's mean validation "
                        "loss and MSE)")
    p.add_argument("--pool-points", type=cli.at_least_two, default=11, help="the curve's points in the pool: t = i/(n-1)")
    p.add_argument("--valid-images", type=cli.positive_int, default=500,
                   help="validation images the selection sees (a folder tree has none: its last training images are used)")
    p.add_argument("--fge-cycles", type=cli.positive_int, default=4, help="FGE cycles (= models collected)")
    p.add_argument("--cycle", type=cli.positive_float, default=2.0, help="cycle length in epochs (rounded to an even number of steps)")
    p.add_argument("--cycle-steps", type=cli.positive_int, default=None, help="cycle length in steps (even); overrides --cycle")
    p.add_argument("--fge-lr1", type=cli.positive_float, default=None, help="high rate alpha1, at the cycle's ends (default: the endpoint's Adam rate)")
    p.add_argument("--fge-lr2", type=cli.positive_float, default=None, help="low rate alpha2, at mid-cycle where models are collected (default: alpha1 / 10)")
    p.add_argument("--no-sse", action="store_true", help="skip the snapshot-ensemble baseline")
    p.add_argument("--batch-size", type=cli.positive_int, default=None, help="batch size of FGE, SSE and longer training (default: the endpoint's)")
    p.add_argument("--seed", type=int, default=None, help="seed of their data order (default: the endpoint's, continuing its order)")
    p.add_argument("--bn-images", type=cli.positive_int, default=2000, help="training images for every member's BatchNorm statistics")
    p.add_argument("--test-images", type=cli.positive_int, default=2000, help="test images every ensemble is scored on")
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=500, help="images per forward pass when scoring")
    p.add_argument("--vgg-weights", default=None, help="perceptual group only: the VGG16 weight file, when the endpoints used one")
    training.add_precision_arg(p)
    data.add_data_args(p, inherit=True)
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help="output folder (default: runs/ensembles/<curve>)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- learning-rate schedules

def fge_lr(i: int, cycle: int, lr1: float, lr2: float) -> float:
    """The paper's triangular rate at iteration i (1-based): alpha1 at the cycle's ends, alpha2 at its middle."""
    t = ((i - 1) % cycle + 1) / cycle
    return (1 - 2 * t) * lr1 + 2 * t * lr2 if t <= 0.5 else (2 - 2 * t) * lr2 + (2 * t - 1) * lr1


def fge_collects(i: int, cycle: int) -> bool:
    """FGE collects the weights after iteration i at mid-cycle, where the rate is alpha2."""
    return i % cycle == cycle // 2


def sse_lr(i: int, cycle: int, lr1: float) -> float:
    """Snapshot ensembles' cosine rate at iteration i (1-based): lr1 at a cycle's start, near 0 at its end."""
    return lr1 / 2 * (1 + math.cos(math.pi * ((i - 1) % cycle) / cycle))


def train_steps(model: nn.Module, images: torch.Tensor, loss_fn: Callable, *, steps: int, lr_at: Callable[[int], float],
                collect_at: Callable[[int], bool], on_collect: Callable[[int, nn.Module], None], batch_size: int, seed: int,
                first_epoch: int, device: torch.device, desc: str, precision: str = "fp32") -> list[float]:
    """Train `model` with Adam for `steps` iterations, iteration i (1-based) at rate lr_at(i), calling
    on_collect(i, model) right after every iteration i with collect_at(i). Epoch e draws its data
    order from training.epoch_generator(seed, first_epoch + e). Returns the rate of every iteration."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_at(1))
    rates: list[float] = []

    def rate(_: int) -> float:  # iteration i = len(rates) + 1 is about to run
        rates.append(lr_at(len(rates) + 1))
        return rates[-1]

    def collect(_: int) -> None:  # right after iteration i = len(rates)
        if collect_at(len(rates)):
            on_collect(len(rates), model)
            model.train()

    step = training.Step(training.as_objective(loss_fn), optimizer, device, batch_size, precision, lr_at=rate)
    per_epoch = math.ceil(len(images) / batch_size)
    for e in range(math.ceil(steps / per_epoch)):
        training.train_epoch(model, images, step, generator=training.epoch_generator(seed, first_epoch + e), epoch=first_epoch + e,
                             max_steps=steps - len(rates), after_step=collect, desc=desc)
    return rates


# ---------------------------------------------------------------- members and ensembles

def flat_weights(model: nn.Module) -> torch.Tensor:
    """The model's parameters (no BatchNorm statistics) as one float64 vector on the CPU."""
    return curves.flat_parameters(model).double().cpu()


@torch.no_grad()
def image_losses(recon: torch.Tensor, images: torch.Tensor, loss_fn: Callable, *, batch_size: int, device: torch.device,
                 features: list | None = None) -> dict[str, torch.Tensor]:
    """Per-image group loss and MSE of reconstructions `recon` of the uint8 `images`; `features`, when
    given, are the perceptual loss's target features per batch (computed once for all members)."""
    loss, sq = [], []
    batches = data.batches(images, batch_size, device=device, memory_format=CHANNELS_LAST)
    for i, x in enumerate(batches):
        r = recon[i * batch_size:(i + 1) * batch_size]
        sq.append(ae.mse(r, x, reduction="none").cpu())
        if loss_fn is not ae.mse:
            extra = {} if features is None else {"target_features": features[i]}
            loss.append(loss_fn(r, x, reduction="none", **extra).cpu())
    sq = torch.cat(sq)
    return {"loss": torch.cat(loss) if loss else sq, "mse": sq}


@torch.no_grad()
def member(model: nn.Module, ev: dict) -> dict:
    """One member: BatchNorm statistics recomputed on ev['bn_images'], then its test
    reconstructions, mean test loss and MSE, and flat weights."""
    return scored(with_bn(model, ev), ev)


@torch.no_grad()
def with_bn(model: nn.Module, ev: dict) -> nn.Module:
    """`model` on ev's device with its BatchNorm statistics recomputed on ev['bn_images'] (in place, training.recompute_bn)."""
    model = model.to(ev["device"], memory_format=CHANNELS_LAST)
    recompute_bn(model, ev["bn_images"], ev.get("noise", 0.0), batch_size=ev["batch_size"], device=ev["device"])  # plain: clean
    return model


@torch.no_grad()
def scored(model: nn.Module, ev: dict) -> dict:
    """A model as a member: its reconstructions of ev['images'], their mean loss and MSE, its flat weights."""
    batch_size, device = ev["batch_size"], ev["device"]
    model = model.to(device, memory_format=CHANNELS_LAST).eval()
    recon = torch.cat([model(x) for x in data.batches(ev["images"], batch_size, device=device, memory_format=CHANNELS_LAST)])
    losses = image_losses(recon, ev["images"], ev["loss_fn"], batch_size=batch_size, device=device, features=ev["features"])
    return {"recon": recon, "weights": flat_weights(model), "test_loss": losses["loss"].double().mean().item(),
            "test_mse": losses["mse"].double().mean().item()}


class Ensemble:
    """A growing ensemble scored as the mean of its members' reconstructions. It keeps running sums
    (reconstructions, their squared norms, the weight vectors and their unit vectors), so members
    need not be kept and the pairwise diversities follow exactly from
    sum_{i<j} |a_i - a_j|^2 = M sum_i |a_i|^2 - |sum_i a_i|^2."""

    def __init__(self):
        self.size, self.recon_sq, self.weight_sq = 0, 0.0, 0.0
        self.recon_sum = self.weight_sum = self.unit_sum = None
        self.member_loss, self.member_mse = [], []

    @torch.no_grad()
    def add(self, m: dict) -> "Ensemble":
        r, w = m["recon"], m["weights"]
        self.recon_sum = r.clone() if self.recon_sum is None else self.recon_sum.add_(r)
        self.recon_sq += torch.linalg.vector_norm(r, dtype=torch.float64).item() ** 2
        self.weight_sum = w.clone() if self.weight_sum is None else self.weight_sum.add_(w)
        self.unit_sum = w / w.norm() if self.unit_sum is None else self.unit_sum.add_(w / w.norm())
        self.weight_sq += w.dot(w).item()
        self.size += 1
        self.member_loss.append(m["test_loss"])
        self.member_mse.append(m["test_mse"])
        return self

    def image_values(self, ev: dict) -> dict[str, torch.Tensor]:
        """Per-image loss and MSE of the ensemble's reconstructions of ev['images']."""
        if self.size == 0:
            raise ValueError("an ensemble needs at least one member")
        return image_losses(self.recon_sum / self.size, ev["images"], ev["loss_fn"], batch_size=ev["batch_size"],
                            device=ev["device"], features=ev["features"])

    def score(self, ev: dict) -> dict:
        """Test loss, MSE (mean and standard error over images) and PSNR of the ensemble, its
        members' mean loss and MSE, and the members' diversity (None for a single member)."""
        n = self.size
        values = self.image_values(ev)
        loss, loss_se = training.mean_and_se(values["loss"])
        sq, sq_se = training.mean_and_se(values["mse"])
        out = {"members": n, "test_loss": loss, "test_loss_se": loss_se, "test_mse": sq, "test_mse_se": sq_se,
               "test_psnr": ae.psnr(sq), "member_test_loss": float(np.mean(self.member_loss)),
               "member_test_mse": float(np.mean(self.member_mse)), "diversity": None, "weight_cosine": None, "weight_distance": None}
        if n > 1:
            pairs = n * (n - 1) / 2
            sum_sq = torch.linalg.vector_norm(self.recon_sum, dtype=torch.float64).item() ** 2
            out["diversity"] = max(n * self.recon_sq - sum_sq, 0.0) / pairs / self.recon_sum[0].numel() / len(self.recon_sum)
            out["weight_cosine"] = (self.unit_sum.dot(self.unit_sum).item() - n) / (2 * pairs)
            out["weight_distance"] = math.sqrt(max(n * self.weight_sq - self.weight_sum.dot(self.weight_sum).item(), 0.0) / pairs)
        return out


def ensemble_of(models: list[dict]) -> Ensemble:
    """An Ensemble of the given members."""
    ens = Ensemble()
    for m in models:
        ens.add(m)
    return ens


# ---------------------------------------------------------------- the methods

def curve_member(net: curves.CurveNet, t: float, ev: dict) -> dict:
    """phi(t) as a member, its BatchNorm statistics recomputed at t."""
    return member(net.export(t), ev)


def figure_2c(net: curves.CurveNet, ts: list[float], first: dict, ev: dict) -> dict:
    """For every t: phi(t) alone and the pair {phi(0), phi(t)} (`first` is phi(0))."""
    out = {"t": ts, "single": {"test_loss": [], "test_mse": [], "test_psnr": []},
           "ensemble": {"test_loss": [], "test_mse": [], "test_psnr": []}, "diversity": [], "weight_cosine": []}
    for t in tqdm(ts, desc="Figure 2c", leave=False, disable=None, dynamic_ncols=True):
        m = curve_member(net, t, ev)
        pair = ensemble_of([first, m]).score(ev)
        for name in ("test_loss", "test_mse"):
            out["single"][name].append(m[name])
            out["ensemble"][name].append(pair[name])
        out["single"]["test_psnr"].append(ae.psnr(m["test_mse"]))
        out["ensemble"]["test_psnr"].append(pair["test_psnr"])
        out["diversity"].append(pair["diversity"])
        out["weight_cosine"].append(pair["weight_cosine"])
    best = int(np.argmin(out["ensemble"]["test_loss"]))
    out["t_best"], out["best_ensemble_loss"] = ts[best], out["ensemble"]["test_loss"][best]
    return out


def curve_ensembles(net: curves.CurveNet, k: int, ends: tuple[dict, dict], budget: float, ev: dict) -> dict:
    """Ensembles of m = 2..k evenly spaced points t = i/(m-1), ends included."""
    growth = []
    for m in tqdm(range(2, k + 1), desc="curve ensembles", leave=False, disable=None, dynamic_ncols=True):
        ts = [i / (m - 1) for i in range(m)]
        members = [ends[0], *(curve_member(net, t, ev) for t in ts[1:-1]), ends[1]]
        growth.append({**ensemble_of(members).score(ev), "t": ts, "budget_epochs": budget})
    return {"label": METHODS["curve"], "placement": "t = i/(K-1), i = 0..K-1 (endpoints included)", "growth": growth}


def cyclic_ensemble(name: str, start: nn.Module, train_images: torch.Tensor, loss_fn: Callable, *, steps: int,
                    lr_at: Callable[[int], float], collect_at: Callable[[int], bool], budget: float, fit: dict, ev: dict,
                    keep: list | None = None) -> dict:
    """Train a copy of `start` for `steps` iterations, adding each collected model to a growing
    ensemble that is scored right away (per-cycle print); `keep` receives (iteration, model) of each."""
    model, ens, growth, collected = copy.deepcopy(start), Ensemble(), [], []

    def on_collect(i: int, live: nn.Module) -> None:
        snapshot = copy.deepcopy(live)
        m = member(snapshot, ev)
        if keep is not None:
            keep.append((i, snapshot.cpu()))
        growth.append({**ens.add(m).score(ev), "iteration": i, "lr": lr_at(i), "budget_epochs": budget})
        collected.append(i)
        g = growth[-1]
        print(f"{name}: model {len(growth)} after iteration {i}/{steps} (lr {lr_at(i):.3g}): its test loss {m['test_loss']:.5f}; "
              f"ensemble of {g['members']}: test loss {g['test_loss']:.5f}, mse {g['test_mse']:.5f}, psnr {g['test_psnr']:.2f} dB", flush=True)

    rates = train_steps(model, train_images, loss_fn, steps=steps, lr_at=lr_at, collect_at=collect_at, on_collect=on_collect,
                        desc=name, **fit)
    return {"label": METHODS.get(name, name), "collected_at": collected, "lr_at_collection": [rates[i - 1] for i in collected],
            "lr_min": min(rates), "lr_max": max(rates), "growth": growth}


# ---------------------------------------------------------------- ensembles chosen from a pool

SELECTIONS = ("uniform", "greedy", "diversity")


def pool_ts(points: int, k: int) -> list[float]:
    """The curve's values of t in the pool: t = i/(points-1) and uniform's t = i/(k-1), ends excluded
    (the ends are the endpoints, which join the pool themselves)."""
    ts = {round(i / (points - 1), 12) for i in range(1, points - 1)} | {round(i / (k - 1), 12) for i in range(1, k - 1)}
    return sorted(ts)


def pairwise_disagreement(recons: list[torch.Tensor]) -> np.ndarray:
    """Mean squared difference per pixel between every two members' reconstructions of the same images."""
    n = len(recons)
    out = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        d = torch.linalg.vector_norm(recons[i] - recons[j], dtype=torch.float64).item() ** 2 / recons[i].numel()
        out[i, j] = out[j, i] = d
    return out


def select_members(single: list[float], ensemble_loss: Callable[[tuple[int, ...]], float], disagreement: np.ndarray,
                   k: int, lam: float, scale: tuple[float, float]) -> list[int]:
    """k distinct pool members, chosen forward: first the member of lowest validation loss, then at
    each step the candidate c maximising -loss(S + c) / L0 + lam * mean_{j in S} d(c, j) / D0, where
    (L0, D0) = `scale` make lam unitless; lam = 0 is plain greedy. Ties go to the lower index."""
    chosen = [int(np.argmin(single))]
    loss_scale, div_scale = scale
    while len(chosen) < min(k, len(single)):
        def gain(c: int) -> float:
            return -ensemble_loss(tuple(sorted([*chosen, c]))) / loss_scale + lam * disagreement[c, chosen].mean() / div_scale
        candidates = [c for c in range(len(single)) if c not in chosen]
        chosen.append(max(candidates, key=lambda c: (gain(c), -c)))
    return chosen


def build_pool(net: curves.CurveNet, curve_ends: list[str], endpoint_models: dict, fge_models: list, ts: list[float], ev: dict,
               valid_ev: dict) -> list[dict]:
    """The candidates: the endpoints, the curve at `ts` (and at an end that is not among the
    endpoints), the FGE members; each with BatchNorm recomputed once, its validation reconstructions
    and loss, and its model (kept to score it on test later). A member's `at` is its t on the curve."""
    ends = {Path(p).resolve(): float(t) for t, p in enumerate(curve_ends)}
    models = [(f"endpoint {Path(p).stem}", "endpoint", ends.get(Path(p).resolve()), copy.deepcopy(m)) for p, m in endpoint_models.items()]
    missing = sorted(set(ends.values()) - {m[2] for m in models})
    models += [(f"curve t={t:.3f}", "curve", t, net.export(t)) for t in sorted([*missing, *ts])]
    models += [(f"FGE {n + 1} (iteration {i})", "fge", None, copy.deepcopy(m)) for n, (i, m) in enumerate(fge_models)]
    pool = []
    for name, kind, where, model in tqdm(models, desc="selection pool", leave=False, disable=None, dynamic_ncols=True):
        model = with_bn(model, ev)
        valid = scored(model, valid_ev)
        pool.append({"name": name, "kind": kind, "at": where, "model": model.cpu(), "valid": valid})
    return pool


def selections(pool: list[dict], k: int, rules: list[str], lambdas: list[float], uniform_t: list[float], ev: dict,
               valid_ev: dict) -> dict:
    """Ensembles of k pool members chosen on the validation images alone by each rule, then scored on
    the test images, with the independent endpoints for reference; differences to uniform are paired over test images."""
    recons = [m["valid"]["recon"] for m in pool]
    single = [m["valid"]["test_loss"] for m in pool]  # member() names its images' loss test_loss; here they are validation images
    memo: dict[tuple[int, ...], float] = {}

    def valid_loss(members: tuple[int, ...]) -> float:
        if members not in memo:
            memo[members] = ensemble_of([pool[i]["valid"] for i in members]).image_values(valid_ev)["loss"].double().mean().item()
        return memo[members]

    disagreement = pairwise_disagreement(recons)
    scale = (float(np.mean(single)), float(np.mean([m["valid"]["test_mse"] for m in pool])))
    chosen = {}
    if "uniform" in rules:
        at = {round(m["at"], 12): i for i, m in enumerate(pool) if m["kind"] in ("curve", "endpoint") and m["at"] is not None}
        chosen["uniform"] = [at[round(t, 12)] for t in uniform_t]
    chosen["independent"] = [i for i, m in enumerate(pool) if m["kind"] == "endpoint"]
    if "greedy" in rules:
        chosen["greedy"] = select_members(single, valid_loss, disagreement, k, 0.0, scale)
    if "diversity" in rules:
        for lam in lambdas:
            chosen[f"diversity lambda={lam:g}"] = select_members(single, valid_loss, disagreement, k, lam, scale)

    test_members: dict[int, dict] = {}
    def test_member(i: int) -> dict:
        if i not in test_members:
            test_members[i] = scored(pool[i]["model"], ev)
        return test_members[i]

    rows, per_image = {}, {}
    for label, members in tqdm(chosen.items(), desc="scoring selections", leave=False, disable=None, dynamic_ncols=True):
        ens = ensemble_of([test_member(i) for i in members])
        per_image[label] = ens.image_values(ev)["loss"].double().numpy()
        pairs = list(itertools.combinations(members, 2))
        rows[label] = {**ens.score(ev), "members_chosen": [pool[i]["name"] for i in members], "indices": members,
                       "valid_loss": valid_loss(tuple(sorted(members))),
                       "valid_diversity": float(np.mean([disagreement[i, j] for i, j in pairs])) if pairs else None}
    for label, row in rows.items():
        if "uniform" in rows and label != "uniform":
            diff = per_image[label] - per_image["uniform"]
            row["vs_uniform"] = {"diff": float(diff.mean()), "se": paired_se(diff)}
    diverse = [label for label in rows if label.startswith("diversity")]
    best = min(diverse, key=lambda label: rows[label]["valid_loss"]) if diverse else None
    return {"rules": rules, "k": k, "lambdas": lambdas if "diversity" in rules else [], "scale": {"loss": scale[0], "disagreement": scale[1]},
            "objective": "-loss(S+c)/L0 + lambda * mean disagreement(c, S)/D0; L0, D0: the pool's mean validation loss and MSE",
            "pool": [{"name": m["name"], "kind": m["kind"], "at": m["at"], "valid_loss": m["valid"]["test_loss"],
                      "valid_mse": m["valid"]["test_mse"]} for m in pool],
            "valid_disagreement": disagreement.tolist(), "ensembles": rows, "chosen_lambda_label": best,
            "chosen_by": "the diversity ensemble of lowest validation loss"}


def save_fge_members(folder: Path, models: list, start_config: dict, start: str, start_epochs: float, per_epoch: int) -> list[Path]:
    """The FGE members as autoencoder checkpoints (BatchNorm recomputed), for function_space.py and
    any script that takes an endpoint; their config says where they came from."""
    paths = []
    for n, (i, model) in enumerate(models):
        config = {**start_config, "epochs": start_epochs + i / per_epoch, "fge_member": {"from": start, "index": n, "iteration": i}}
        paths.append(save_ae(ensure_dir(folder) / f"member{n + 1}.pt", model, config, {}))
    return paths


def draw_selection(result: dict) -> plt.Figure:
    """Test loss against test diversity of every selected ensemble: the trade-off curve over lambda,
    with greedy, uniform and the independent endpoints marked."""
    sel = result["selection"]
    rows = sel["ensembles"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    diverse = [(float(label.split("=")[1]), row) for label, row in rows.items() if label.startswith("diversity")]
    if diverse:
        xs, ys = [r["diversity"] for _, r in diverse], [r["test_loss"] for _, r in diverse]
        ax.errorbar(xs, ys, yerr=[r["test_loss_se"] for _, r in diverse], fmt="o-", color="C2", capsize=2,
                    label=f"diversity, lambda = {', '.join(f'{lam:g}' for lam, _ in diverse)}")
        same: dict[tuple, list[str]] = {}  # lambdas that chose the same members share one label
        for (lam, _), x, y in zip(diverse, xs, ys):
            same.setdefault((x, y), []).append(f"{lam:g}")
        for (x, y), lams in same.items():
            ax.annotate(", ".join(lams), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    marks = {"greedy": ("s", "C1", "greedy"), "uniform": ("*", "C0", f"uniform t (K={sel['k']})"),
             "independent": ("^", "C3", "independent endpoints")}
    for label, (marker, colour, text) in marks.items():
        if label in rows and rows[label]["diversity"] is not None:
            r = rows[label]
            ax.errorbar([r["diversity"]], [r["test_loss"]], yerr=[r["test_loss_se"]], fmt=marker, color=colour, ms=10, capsize=2,
                        label=f"{text} ({r['members']} members)")
    ax.set_xlabel("diversity: mean sq. difference per pixel between members (test)")
    ax.set_ylabel(f"ensemble test {result['loss']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{result['loss']} autoencoders: ensembles of K={sel['k']} chosen on validation images\n"
                 f"(error bars: SE over test images; paired differences to uniform are in ensemble.json)", fontsize=9)
    fig.tight_layout()
    return fig


def print_selection(sel: dict) -> None:
    print(f"\nensembles of {sel['k']} chosen from a pool of {len(sel['pool'])} on validation images, scored on test:")
    print(f"{'rule':24} {'valid loss':>10} {'test loss':>10} {'+-':>8} {'diversity':>10} {'vs uniform':>18}")
    for label, r in sel["ensembles"].items():
        vs = r.get("vs_uniform")
        vs = f"{vs['diff']:+.2e}+-{vs['se']:.1e}" if vs else "-"
        div = "-" if r["diversity"] is None else f"{r['diversity']:.3g}"
        print(f"{label:24} {r['valid_loss']:10.5f} {r['test_loss']:10.5f} {r['test_loss_se']:8.1e} {div:>10} {vs:>18}")


# ---------------------------------------------------------------- input checks, budgets, figures

def complex_ensembles(path: str, k: int, group: dict, ev: dict) -> tuple[dict, dict]:
    """Ensembles of the first m = 1..k of k uniform samples of the complex at `path`, and its budget."""
    net, ckpt = complexes.load(path)
    config = ckpt["config"]
    check_member(path, config, group)
    parts = [{"what": f"endpoint {Path(e['path']).name}", "epochs": epochs_of(e["config"], e["path"])} for e in config["endpoints"]]
    parts.append({"what": f"complex fit ({config['connectors']} connectors)", "epochs": epochs_of(config, path)})
    budget = {"epochs": sum(p["epochs"] for p in parts), "parts": parts, "rule": "the complex's endpoints' epochs + its own"}
    generator = torch.Generator().manual_seed(COMPLEX_SEED)
    ens, growth = Ensemble(), []
    for _ in tqdm(range(k), desc="complex ensembles", leave=False, disable=None, dynamic_ncols=True):
        simplex, point = complexes.sample_point(config["simplexes"], net.num_bends, generator)
        growth.append({**ens.add(member(net.export(point), ev)).score(ev), "budget_epochs": budget["epochs"],
                       "simplex": simplex, "point": point})
    return {"label": METHODS["complex"], "placement": "K uniform samples: a simplex uniformly, a Dirichlet(1) point in it",
            "complex_ckpt": str(path), "growth": growth}, budget


def epochs_of(config: dict, what: str) -> float:
    """A checkpoint's own training epochs, or a UserError: the budget cannot be accounted without it."""
    epochs = config.get("epochs")
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool):
        raise UserError(f"{what} records no training epochs, so its budget cannot be accounted; use checkpoints of train_ae.py / fit_curve.py")
    return float(epochs)


def check_member(path: str, config: dict, group: dict) -> None:
    """Refuse an endpoint outside the curve's loss group or architecture, naming what differs."""
    for key in ("loss", "vgg_weights", "vgg_layers", "model"):
        if config.get(key) != group.get(key):
            raise UserError(f"{path} has {key} {config.get(key)}, but the curve's group has {group.get(key)}; "
                            f"ensemble members must share the curve's loss and architecture")


def cycle_steps(args: argparse.Namespace, per_epoch: int) -> int:
    """The cycle length c in steps: --cycle-steps, else --cycle epochs rounded to an even number >= 2."""
    if args.cycle_steps is not None:
        return args.cycle_steps
    return max(2, 2 * round(args.cycle * per_epoch / 2))


def table_rows(methods: dict) -> list[dict]:
    """Table 1 of the paper, for autoencoders: one row per ensemble worth comparing."""
    rows, keys = [], ("budget_epochs", "members", "test_loss", "test_loss_se", "test_mse", "test_psnr", "member_test_loss",
                      "member_test_mse", "diversity", "weight_cosine", "weight_distance")
    def row(method: str, label: str, g: dict) -> dict:
        return {"method": method, "label": label, **{k: g[k] for k in keys}}
    ends = methods["endpoints"]["growth"]
    rows.append(row("endpoints", "single endpoint", ends[0]))
    rows += [row("endpoints", f"{g['members']} independent endpoints", g) for g in ends[1:]]
    g = methods["curve"]["growth"][-1]
    rows.append(row("curve", f"{g['members']} points on the curve (ends incl.)", g))
    for name in ("fge", "sse"):
        if name in methods:
            g = methods[name]["growth"][-1]
            rows.append(row(name, f"{METHODS[name]}, {g['members']} models", g))
    rows.append(row("longer", METHODS["longer"], methods["longer"]["growth"][0]))
    if "complex" in methods:
        g = methods["complex"]["growth"][-1]
        rows.append(row("complex", f"{g['members']} {METHODS['complex']}", g))
    return rows


def draw_members(result: dict) -> plt.Figure:
    """Test loss, MSE and PSNR against the number of members, one line per method (budget in the legend)."""
    panels = [("test_loss", f"test {result['loss']}")] + ([("test_mse", "test MSE")] if result["loss"] != "mse" else [])
    panels.append(("test_psnr", "test PSNR (dB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    for ax, (key, title) in zip(axes, panels):
        for name, method in result["methods"].items():
            growth = method["growth"]
            budgets = sorted({g["budget_epochs"] for g in growth})
            budget = f"{budgets[0]:g}" if len(budgets) == 1 else f"{budgets[0]:g}-{budgets[-1]:g}"
            ax.plot([g["members"] for g in growth], [g[key] for g in growth], "*" if len(growth) == 1 else "o-",
                    ms=11 if len(growth) == 1 else 5, label=f"{method['label']} ({budget} ep)")
        ax.set_xlabel("members")
        ax.set_ylabel(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['loss']} autoencoders: ensembles vs members (budget in epochs)")
    fig.tight_layout()
    return fig


def draw_fig2c(result: dict) -> plt.Figure:
    """Figure 2c: the pair {phi(0), phi(t)} and phi(t) alone against t, and their diversity."""
    f = result["fig2c"]
    panels = [("test_loss", f"test {result['loss']}")] + ([("test_mse", "test MSE")] if result["loss"] != "mse" else [])
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.2))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(f["t"], f["single"][key], "-", lw=1.8, label="phi(t) alone")
        ax.plot(f["t"], f["ensemble"][key], "-", lw=1.8, label="ensemble {phi(0), phi(t)}")
        ax.axhline(f["single"][key][0], color="gray", ls=":", lw=1, label="phi(0)")
        ax.set_ylabel(title)
    axes[-1].plot(f["t"], f["diversity"], "-", color="C2", lw=1.8)
    axes[-1].set_ylabel("diversity of phi(0), phi(t) (mean sq. diff. per pixel)")
    for ax in axes:
        ax.set_xlabel("t")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Figure 2c for autoencoders: {result['curve']} curve, {result['loss']} loss")
    fig.tight_layout()
    return fig


def print_table(result: dict) -> None:
    print(f"\nensembles, {result['loss']} loss, on {result['settings']['test_images']} test images:")
    print(f"{'method':38} {'epochs':>7} {'M':>3} {'loss':>9} {'mse':>9} {'psnr':>6} {'members':>9} {'divers.':>9} {'w cos':>6}")
    for r in result["table"]:
        div = "-" if r["diversity"] is None else f"{r['diversity']:.3g}"
        cos = "-" if r["weight_cosine"] is None else f"{r['weight_cosine']:.3f}"
        print(f"{r['label']:38} {r['budget_epochs']:7.3g} {r['members']:3d} {r['test_loss']:9.5f} {r['test_mse']:9.5f} "
              f"{r['test_psnr']:6.2f} {r['member_test_loss']:9.5f} {div:>9} {cos:>6}")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.cycle_steps is not None and args.cycle_steps % 2:
        raise UserError(f"--cycle-steps must be even (models are collected at mid-cycle), got {args.cycle_steps}")
    device = cli.pick_device(args.device)
    ckpt_path = Path(args.ckpt) if args.ckpt else newest_curve()
    net, ckpt = load_curve(ckpt_path)
    config = ckpt["config"]
    endpoint_paths = args.endpoints or [e["path"] for e in config["endpoints"]]
    if len({Path(p).resolve() for p in endpoint_paths}) != len(endpoint_paths):
        raise UserError(f"--endpoints has repeats ({' '.join(map(str, endpoint_paths))}); give distinct checkpoints")
    fge_path = args.fge_from or endpoint_paths[0]
    loaded = {str(p): load_ae(p) for p in [*endpoint_paths, fge_path]}
    for path, (_, c) in loaded.items():
        check_member(path, c["config"], config)
        if c["config"].get("data") != config["data"]:
            print(f"warning: {path} was trained on other data settings than the curve; all members are scored on the curve's")
    start_model, start_ckpt = loaded[str(fge_path)]
    start_cfg = start_ckpt["config"]
    lr1 = args.fge_lr1 or float(start_cfg["lr"])
    lr2 = args.fge_lr2 if args.fge_lr2 is not None else lr1 / 10
    if not lr2 < lr1:
        raise UserError(f"--fge-lr2 ({lr2:g}) must be below --fge-lr1 ({lr1:g}): alpha2 is the low rate at which models are collected")

    out = ensure_dir(Path(args.out) if args.out else Path("runs/ensembles") / ckpt_path.stem)
    data_cfg = data.data_config(args, base=config["data"])
    train_images = data.load_split(data_cfg, "train")
    test_images = data.load_split(data_cfg, "test")[: args.test_images]
    if ae.group_of(config) != config["loss"]:
        raise UserError(f"ensembles of the {ae.group_of(config)} group are not supported yet (they score the plain loss "
                        f"of averaged reconstructions); run ensemble.py on a curve of a plain mse or perceptual group")
    objective = training.objective_from_config(config, args.vgg_weights, device)
    loss_fn = objective.loss_fn
    # how every member and ensemble is scored: BatchNorm on bn_images, then the loss on the test images
    ev = {"images": test_images, "bn_images": train_images[: args.bn_images], "noise": objective.noise, "loss_fn": loss_fn,
          "batch_size": args.eval_batch_size, "device": device, "features": target_features(loss_fn, {"test": test_images}, args.eval_batch_size, device)["test"]}

    batch_size = args.batch_size or int(start_cfg.get("batch_size") or 128)
    per_epoch = math.ceil(len(train_images) / batch_size)
    cycle = cycle_steps(args, per_epoch)
    steps = cycle * args.fge_cycles
    seed = args.seed if args.seed is not None else int(start_cfg.get("seed") or 0)
    precision = training.resolve_precision(args.precision, device, config["loss"])  # of FGE, SSE and longer training; scoring is fp32

    # Budgets in epochs: every method counts all the training its members needed.
    start_epochs = epochs_of(start_cfg, str(fge_path))
    fge_epochs = steps / per_epoch
    end_epochs = [epochs_of(loaded[str(p)][1]["config"], str(p)) for p in endpoint_paths]
    curve_parts = [{"what": f"endpoint {Path(e['path']).name}", "epochs": epochs_of(e["config"], e["path"])} for e in config["endpoints"]]
    curve_parts.append({"what": f"{config['curve']} curve fit", "epochs": epochs_of(config, str(ckpt_path))})
    cyclic_parts = [{"what": f"endpoint {Path(fge_path).name}", "epochs": start_epochs},
                    {"what": f"{steps} steps ({args.fge_cycles} cycles of {cycle}) of {per_epoch} per epoch", "epochs": fge_epochs}]
    budget = {"endpoints": {"epochs": sum(end_epochs), "parts": [{"what": f"endpoint {Path(p).name}", "epochs": e}
                                                                  for p, e in zip(endpoint_paths, end_epochs)],
                            "rule": "an ensemble of the first M endpoints costs the sum of their own epochs"},
              "curve": {"epochs": sum(p["epochs"] for p in curve_parts), "parts": curve_parts,
                        "rule": "both endpoints' epochs + the curve's epochs (also for Figure 2c)"},
              **{name: {"epochs": start_epochs + fge_epochs, "parts": cyclic_parts, "rule": "the start endpoint's epochs + the extra steps"}
                 for name in ("fge", "sse", "longer") if not (name == "sse" and args.no_sse)}}

    print(f"ensembles for {ckpt_path} ({config['loss']} loss): {len(endpoint_paths)} endpoints, {len(test_images)} test images, "
          f"device {device}; FGE from {fge_path}: {args.fge_cycles} cycles of {cycle} steps, lr {lr1:g} -> {lr2:g} (Adam)")
    t0 = time.time()
    net = net.to(device, memory_format=CHANNELS_LAST)
    ends = (curve_member(net, 0.0, ev), curve_member(net, 1.0, ev))
    fig2c = figure_2c(net, np.linspace(0.0, 1.0, args.points).tolist(), ends[0], ev)
    print(f"Figure 2c: best pair {{phi(0), phi({fig2c['t_best']:.3f})}} test loss {fig2c['best_ensemble_loss']:.5f} "
          f"(phi(0) alone {fig2c['single']['test_loss'][0]:.5f}, with phi(1) {fig2c['ensemble']['test_loss'][-1]:.5f})")
    methods = {"curve": curve_ensembles(net, args.k, ends, budget["curve"]["epochs"], ev)}
    del ends

    ens, growth = Ensemble(), []
    for path, epochs in zip(endpoint_paths, np.cumsum(end_epochs).tolist()):
        growth.append({**ens.add(member(copy.deepcopy(loaded[str(path)][0]), ev)).score(ev), "budget_epochs": epochs, "path": str(path)})
    methods["endpoints"] = {"label": METHODS["endpoints"], "growth": growth}
    if args.complex:
        methods["complex"], budget["complex"] = complex_ensembles(args.complex, args.k, config, ev)

    fit = {"batch_size": batch_size, "seed": seed, "first_epoch": int(start_epochs), "device": device, "precision": precision}
    start_model = start_model.to(device, memory_format=CHANNELS_LAST)
    cyclic = {"train_images": train_images, "loss_fn": loss_fn, "steps": steps, "budget": budget["fge"]["epochs"], "fit": fit, "ev": ev}
    fge_models: list = []
    methods["fge"] = cyclic_ensemble("fge", start_model, lr_at=lambda i: fge_lr(i, cycle, lr1, lr2),
                                     collect_at=lambda i: fge_collects(i, cycle), keep=fge_models, **cyclic)
    if not args.no_sse:
        methods["sse"] = cyclic_ensemble("sse", start_model, lr_at=lambda i: sse_lr(i, cycle, lr1),
                                         collect_at=lambda i: i % cycle == 0, **cyclic)
    start_lr = float(start_cfg["lr"])
    methods["longer"] = cyclic_ensemble("longer", start_model, lr_at=lambda i: start_lr, collect_at=lambda i: i == steps, **cyclic)

    result = {"format": ENSEMBLE_FORMAT, "definition": DEFINITION, "curve_ckpt": str(ckpt_path), "curve_sha256": file_sha256(ckpt_path),
              "curve": config["curve"], "num_bends": config["num_bends"], "loss": config["loss"], "vgg_weights": config.get("vgg_weights"),
              "vgg_layers": config.get("vgg_layers"),
              "model": config["model"], "data": data_cfg, "endpoints": [str(p) for p in endpoint_paths], "fge_from": str(fge_path),
              "settings": {"points": args.points, "k": args.k, "bn_images": len(ev["bn_images"]), "test_images": len(test_images),
                           "eval_batch_size": args.eval_batch_size,
                           "fge": {"optimizer": "adam", "lr1": lr1, "lr2": lr2, "cycles": args.fge_cycles, "cycle_steps": cycle,
                                   "cycle_epochs": cycle / per_epoch, "steps": steps, "steps_per_epoch": per_epoch,
                                   "batch_size": batch_size, "seed": seed, "first_epoch": int(start_epochs), "precision": precision,
                                   "sse": not args.no_sse, "longer_lr": start_lr}},
              "budget": budget, "fig2c": fig2c, "methods": methods, "table": table_rows(methods), "seconds": time.time() - t0}
    fge_files = save_fge_members(out / "fge", fge_models, start_cfg, str(fge_path), start_epochs, per_epoch)
    files = {"members_png": "members.png", "fig2c_png": "fig2c.png", "fge_members": [p.relative_to(out).as_posix() for p in fge_files]}
    drawn = [("members_png", draw_members), ("fig2c_png", draw_fig2c)]
    if args.select:
        valid_images, source = image_files.validation_images(data_cfg, args.valid_images)
        valid_ev = {**ev, "images": valid_images,
                    "features": target_features(loss_fn, {"valid": valid_images}, args.eval_batch_size, device)["valid"]}
        pool = build_pool(net, [e["path"] for e in config["endpoints"]], {str(p): loaded[str(p)][0] for p in endpoint_paths},
                          fge_models, pool_ts(args.pool_points, args.k), ev, valid_ev)
        uniform_t = [i / (args.k - 1) for i in range(args.k)]
        result["selection"] = {**selections(pool, args.k, list(args.select), args.lambdas, uniform_t, ev, valid_ev),
                               "valid_images": len(valid_images), "valid_source": source,
                               "budget_epochs": budget["endpoints"]["epochs"] + curve_parts[-1]["epochs"] + fge_epochs}
        del pool
        drawn.append(("selection_png", draw_selection))
        files["selection_png"] = "selection.png"
    result["seconds"] = time.time() - t0
    for key, draw in drawn:
        fig = draw(result)
        save_figure(fig, out / files[key], dpi=130)
    result["files"] = files
    write_json(out / "ensemble.json", result)  # last: its presence means the run and its figures are complete
    print_table(result)
    if "selection" in result:
        print_selection(result["selection"])
    written = [files[key] for key in ("members_png", "fig2c_png", "selection_png") if key in files]
    print(f"\nwrote {out / 'ensemble.json'}, {', '.join(written)}, {len(fge_files)} FGE members in {out / 'fge'} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    cli.run(main)
