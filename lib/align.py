"""Permutation alignment of two autoencoders (Ainsworth et al. 2023, "Git Re-Basin"): weight matching or
activation matching.

Hidden units can be reordered without changing what a network computes. `align` reorders B's units to match
A's, so that the straight segment between A and the aligned B (`aligned_segment`) measures the barrier that
permutation symmetry cannot explain (Entezari et al. 2022). Weight matching brings B's weights as close as
possible to A's; activation matching pairs each of A's units with the unit of B whose activations over a fixed
set of training images correlate best with it (one assignment per permutable group), as REPAIR (Jordan et al.
2023) aligns too. Knows the architecture 'conv-ae-v1' of ae.py only.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

import ae
import curves
from lib import cli, training
from lib.files import UserError

ARCH = ae.ARCH
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
MAX_ITERATIONS = 100
# Where activation matching reads each group's units: the output of the ReLU after its layer (the code: the Linear itself).
ACTIVATIONS = {"encoder.0": "encoder.2", "encoder.3": "encoder.5", "encoder.6": "encoder.8", "encoder.9": "encoder.11",
               "code": "encoder.13", "decoder.0": "decoder.3", "decoder.4": "decoder.6", "decoder.7": "decoder.9",
               "decoder.10": "decoder.12"}

# For every tensor that a permutation touches: the shape to view it as, and the group permuting
# each axis of that view (None: an axis no permutation touches).
Spec = dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]]


def permutation_spec(config: dict) -> Spec:
    """The permutable groups of a 'conv-ae-v1' model (layer indices of ae.AutoEncoder's Sequentials),
    each named after the layer whose outputs it reorders: the hidden (transposed) convolutions' channels
    with their BatchNorm, the code's units ('code'), and the channels of the decoder's first 4x4 map."""
    if config.get("arch") != ARCH:
        raise UserError(f"cannot align architecture {config.get('arch')!r}: align.py knows only {ARCH!r}")
    w, z = int(config["width"]), int(config["latent_dim"])
    c = [w, 2 * w, 4 * w, 8 * w]
    spec: Spec = {}

    def batchnorm(layer: str, group: str, n: int) -> None:
        spec.update({f"{layer}.{name}": ((n,), (group,)) for name in BN_TENSORS})

    group = None  # the group of the channels flowing into the next layer (None: the image's)
    for i, n_in, n_out in zip((0, 3, 6, 9), [3, *c[:3]], c):  # Conv2d weight [out, in, 4, 4], then BatchNorm
        spec[f"encoder.{i}.weight"] = ((n_out, n_in, 4, 4), (f"encoder.{i}", group, None, None))
        batchnorm(f"encoder.{i + 1}", f"encoder.{i}", n_out)
        group = f"encoder.{i}"
    # the code's Linear reads the flattened [c3, 4, 4] map; the decoder's first Linear writes one, unflattened by decoder.1
    spec["encoder.13.weight"] = ((z, c[3], 16), ("code", group, None))
    spec["encoder.13.bias"] = ((z,), ("code",))
    spec["decoder.0.weight"] = ((c[3], 16, z), ("decoder.0", None, "code"))
    spec["decoder.0.bias"] = ((c[3], 16), ("decoder.0", None))
    batchnorm("decoder.2", "decoder.0", c[3])
    group = "decoder.0"
    for i, n_in, n_out in zip((4, 7, 10), c[:0:-1], c[-2::-1]):  # ConvTranspose2d weight [in, out, 4, 4], then BatchNorm
        spec[f"decoder.{i}.weight"] = ((n_in, n_out, 4, 4), (group, f"decoder.{i}", None, None))
        batchnorm(f"decoder.{i + 1}", f"decoder.{i}", n_out)
        group = f"decoder.{i}"
    spec["decoder.13.weight"] = ((c[0], 3, 4, 4), (group, None, None, None))  # to the image's 3 channels: those stay
    return spec


def permuted(x: torch.Tensor, axes: tuple[str | None, ...], perms: dict[str, torch.Tensor], skip: int | None = None) -> torch.Tensor:
    """`x` (already in its view shape) with every axis but `skip` reordered by its group's permutation."""
    for axis, group in enumerate(axes):
        if group is not None and axis != skip:
            x = x.index_select(axis, perms[group].to(x.device))
    return x


def apply(state: dict, spec: Spec, perms: dict[str, torch.Tensor]) -> dict:
    """A copy of `state` with every tensor of `spec` permuted (unit i of a group becomes unit perms[group][i])."""
    out = dict(state)
    for key, (shape, axes) in spec.items():
        out[key] = permuted(state[key].reshape(shape), axes, perms).reshape(state[key].shape).clone()
    return out


def match(a: dict, b: dict, spec: Spec, max_iterations: int) -> tuple[dict[str, torch.Tensor], int, bool]:
    """Coordinate descent over the groups in a fixed order: each group's permutation is set by
    linear_sum_assignment to maximise sum <A, P(B)> over the tensors it touches, the others held
    fixed, and kept only if it raises that sum; until a pass changes none. Returns (perms, passes, converged)."""
    groups = list(dict.fromkeys(g for _, axes in spec.values() for g in axes if g is not None))
    sizes = {g: shape[axes.index(g)] for shape, axes in spec.values() for g in axes if g is not None}
    perms = {g: torch.arange(sizes[g]) for g in groups}
    for passes in range(1, max_iterations + 1):
        changed = False
        for g in groups:
            n = sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for key, (_, axes) in spec.items():
                if key in a and g in axes:
                    axis = axes.index(g)
                    wb = permuted(b[key], axes, perms, skip=axis)
                    cost += a[key].movedim(axis, 0).reshape(n, -1) @ wb.movedim(axis, 0).reshape(n, -1).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new, rows = torch.as_tensor(cols, dtype=torch.long), torch.arange(n)
            old_value, new_value = cost[rows, perms[g]].sum().item(), cost[rows, new].sum().item()
            if new_value > old_value + 1e-12 * abs(old_value):  # a tie is no change: the descent cannot cycle
                perms[g], changed = new, True
        if not changed:
            return perms, passes, True
    return perms, max_iterations, False


def distance(a: dict, b: dict, names: list[str]) -> float:
    """||A - B|| over the tensors `names` (the parameters: BatchNorm statistics are recomputed along paths)."""
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in names) ** 0.5


@torch.no_grad()
def correlations(state_a: dict, state_b: dict, config: dict, images: torch.Tensor, *, noise: float = 0.0, batch_size: int = 128,
                 device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Per permutable group, the correlation [units of A, units of B] of the two networks' unit activations (where
    ACTIVATIONS reads them) over `images`, every position of a feature map a sample: each network with its
    BatchNorm statistics recomputed on those images as training.recompute_bn does, then run in eval mode on them."""
    device = device or torch.device("cpu")
    sums = {}
    models = []
    for state in (state_a, state_b):
        model = ae.build_model(config).to(device)
        model.load_state_dict(state)
        training.recompute_bn(model, images, noise, batch_size=batch_size, device=device)
        models.append(model.eval())
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = [dict(m.named_modules())[where].register_forward_hook(
        lambda _, __, out, key=(i, group): outputs.__setitem__(key, out))
        for i, m in enumerate(models) for group, where in ACTIVATIONS.items()]
    try:
        for x in training.seen_batches(images, noise, batch_size=batch_size, device=device):
            for m in models:
                m(x)
            for group in ACTIVATIONS:
                u, v = (outputs[(i, group)].double().movedim(1, 0).reshape(outputs[(i, group)].shape[1], -1) for i in (0, 1))
                s = sums.setdefault(group, {"n": 0, "a": 0.0, "b": 0.0, "aa": 0.0, "bb": 0.0, "ab": 0.0})
                s["n"] += u.shape[1]
                s["a"], s["b"] = s["a"] + u.sum(1), s["b"] + v.sum(1)
                s["aa"], s["bb"], s["ab"] = s["aa"] + (u * u).sum(1), s["bb"] + (v * v).sum(1), s["ab"] + u @ v.T
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for group, s in sums.items():
        n = s["n"]
        mean_a, mean_b = s["a"] / n, s["b"] / n
        std_a = (s["aa"] / n - mean_a ** 2).clamp_min(0).sqrt()
        std_b = (s["bb"] / n - mean_b ** 2).clamp_min(0).sqrt()
        cov = s["ab"] / n - mean_a[:, None] * mean_b[None, :]
        out[group] = (cov / (std_a[:, None] * std_b[None, :]).clamp_min(1e-12)).cpu()  # a dead unit correlates with nothing
    return out


def activation_match(corr: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One assignment per group: B's unit perms[g][i] is A's unit i's partner, maximising the summed correlation."""
    return {g: torch.as_tensor(linear_sum_assignment(c.numpy(), maximize=True)[1], dtype=torch.long) for g, c in corr.items()}


def align(state_a: dict, state_b: dict, config: dict, max_iterations: int = MAX_ITERATIONS, *, method: str = "weights",
          images: torch.Tensor | None = None, noise: float = 0.0, batch_size: int = 128,
          device: torch.device | None = None) -> tuple[dict, dict]:
    """B's state dict with its units permuted to match A's, by weight matching (on the parameters; the BatchNorm
    statistics follow their channels) or by activation matching (on `images`, see correlations), so it computes the
    same function; and what it did."""
    spec = permutation_spec(config)
    names = [name for name, _ in ae.build_model(config).named_parameters()]
    if method == "weights":
        view = lambda state: {k: state[k].detach().cpu().double().reshape(spec[k][0]) for k in names if k in spec}  # noqa: E731
        perms, passes, converged = match(view(state_a), view(state_b), spec, max_iterations)
        extra = {}
    elif method == "activations":
        if images is None or len(images) == 0:
            raise UserError("activation matching needs training images to compare the networks' units on")
        corr = correlations(state_a, state_b, config, images, noise=noise, batch_size=batch_size, device=device)
        perms, passes, converged = activation_match(corr), 1, True
        identity = {g: float(np.mean(np.diag(c.numpy()))) for g, c in corr.items()}
        matched = {g: float(c[torch.arange(len(p)), p].mean()) for (g, c), p in zip(corr.items(), perms.values())}
        extra = {"images": len(images), "mean_correlation_before": identity, "mean_correlation_after": matched}
    else:
        raise UserError(f"unknown alignment method {method!r}; choose one of {', '.join(cli.ALIGN_METHODS)}")
    aligned = apply(state_b, spec, perms)
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    info = {"method": f"{'weight' if method == 'weights' else 'activation'} matching", "iterations": passes,
            "converged": converged, "distance_before": distance(state_a, state_b, names),
            "distance_after": distance(state_a, aligned, names), "units_moved": moved,
            "units": sum(len(p) for p in perms.values()), **extra}
    return aligned, info


def aligned_segment(net: curves.CurveNet, **how) -> curves.CurveNet:
    """The straight segment from the curve's t=0 end to its t=1 end aligned to it (as training.segment_of, after
    `align`, whose keyword arguments `how` takes); what the alignment did is in the segment's `alignment` attribute."""
    start = net.state_dict_at(0.0)
    end, info = align(start, net.state_dict_at(1.0), ae.model_config(net.template), **how)
    segment = curves.segment(net.template, start, end)
    segment.alignment = info
    return segment
