"""Networks saved as autoencoder checkpoints: eval_curve.py --save-t (a curve's point, save_point) and
train_ae.py --snapshots N (hook): N autoencoder checkpoints per epoch, after optimiser steps floor(k P / N), k = 1..N,
of the epoch's P steps (the last at its end), for function_space.py. Imported only with these flags.

They are written as <out without .pt>.snapshots/step<global step>.pt; their config is the run's plus "snapshot":
{"epoch": fractional epoch, "step": global step, "of": out}. They change nothing in training: the final checkpoint
is the same byte for byte. With --resume, finished epochs' snapshots stay and the run writes the rest."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

import ae
import curves
from lib import training
from lib.files import save_ae


def steps(per_epoch: int, n: int) -> list[int]:
    """After how many of an epoch's `per_epoch` optimiser steps its `n` snapshots are taken: floor(k P / n), k = 1..n."""
    return [k * per_epoch // n for k in range(1, n + 1)]


def hook(folder: Path | None, model: torch.nn.Module, run_config: dict, out: Path, epoch: int, per_epoch: int,
                  n: int) -> Callable[[int], None] | None:
    """train_epoch's `after_step` that writes epoch `epoch`'s (0-based) snapshots into `folder`; None when n is 0."""
    if n == 0:
        return None
    due = set(steps(per_epoch, n))

    def after_step(step: int) -> None:
        if step + 1 in due:
            done = epoch * per_epoch + step + 1  # optimiser steps since the start of training
            where = {"epoch": done / per_epoch, "step": done, "of": str(out)}
            save_ae(folder / f"step{done:06d}.pt", model, {**run_config, "snapshot": where}, {"epoch": where["epoch"], "step": done})

    return after_step


def save_point(net: curves.CurveNet, t: float, path: Path, config: dict, bn_images: torch.Tensor, batch_size: int,
               device: torch.device, loss_fn=ae.mse) -> Path:
    """Save phi(t), with BatchNorm statistics recomputed at t (on the inputs `loss_fn`'s objective sees), as an
    autoencoder checkpoint."""
    training.recompute_bn(net, bn_images, training.as_objective(loss_fn).noise, batch_size=batch_size, device=device, t=t)
    endpoint = config["endpoints"][0]["config"]
    point_config = {**endpoint, "seed": None, "curve_point": {"curve": config["curve"], "t": t, "endpoints": [e["path"] for e in config["endpoints"]]}}
    return save_ae(path, net.export(t), point_config, {"t": t})
