"""Curves in weight space (Garipov et al. 2018, arXiv 1802.10026, Section 3).

A curve phi_theta(t) = sum_j c_j(t) w_j joins two networks w_0 (t=0) and w_{k-1} (t=1) through
k-2 free bends. `Bezier` and `PolyChain` give the coefficients c_j(t); each curve layer keeps one
parameter per bend per tensor (`weight_0 ... weight_{k-1}`, `bias_0 ...`) and combines them for
the current t. `CurveNet` turns any model made of supported layers into a curve network by
swapping its layers, so the architecture is written once. Knows nothing of images.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CURVES = ("bezier", "polychain")


def check_t(t: float) -> float:
    """Return t as a float, or raise ValueError if it is not in [0, 1]."""
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    return t


class Coefficients:
    """The coefficient functions' shared part: the number of bends, at least the two ends."""

    def __init__(self, num_bends: int):
        if num_bends < 2:
            raise ValueError(f"a curve needs num_bends >= 2, got {num_bends}")
        self.num_bends = num_bends


class Bezier(Coefficients):
    """Bezier coefficients: c_j(t) = C(k-1, j) t^j (1-t)^(k-1-j)."""

    def __call__(self, t: float) -> list[float]:
        t, n = check_t(t), self.num_bends - 1
        return [math.comb(n, j) * t**j * (1 - t) ** (n - j) for j in range(n + 1)]

    def derivative(self, t: float) -> list[float]:
        """dc_j/dt = (k-1) (b_{j-1}(t) - b_j(t)), with b the Bezier coefficients of one degree less."""
        t, n = check_t(t), self.num_bends - 1
        lower = Bezier(n)(t) if n > 1 else [1.0]
        return [n * ((lower[j - 1] if j > 0 else 0.0) - (lower[j] if j < n else 0.0)) for j in range(n + 1)]


class PolyChain(Coefficients):
    """Piecewise-linear coefficients through the bends, placed at t = j / (k-1)."""

    def __call__(self, t: float) -> list[float]:
        s = check_t(t) * (self.num_bends - 1)
        i = min(int(s), self.num_bends - 2)
        coeffs = [0.0] * self.num_bends
        coeffs[i], coeffs[i + 1] = 1.0 - (s - i), s - i
        return coeffs

    def derivative(self, t: float) -> list[float]:
        """dc_j/dt on the piece that holds t (the later piece at a bend, as __call__ chooses)."""
        i = min(int(check_t(t) * (self.num_bends - 1)), self.num_bends - 2)
        coeffs = [0.0] * self.num_bends
        coeffs[i], coeffs[i + 1] = -(self.num_bends - 1.0), self.num_bends - 1.0
        return coeffs


def make_curve(name: str, num_bends: int):
    """The coefficient function called `name` ('bezier' or 'polychain')."""
    if name == "bezier":
        return Bezier(num_bends)
    if name == "polychain":
        return PolyChain(num_bends)
    raise ValueError(f"unknown curve {name!r}; choose one of {', '.join(CURVES)}")


class CurveModule(nn.Module):
    """Base of the curve layers: one parameter per bend for each tensor in `param_names`.

    `fix_ends` says which bends are fixed (no gradient): True the ends (0 and k-1), False none, or any collection of
    indices (the fixed vertices of a simplicial complex). `coeffs` holds c_j(t) for the current t (or the current
    point of a simplex), set by CurveNet before each forward.
    """

    def __init__(self, source: nn.Module, param_names: tuple[str, ...], num_bends: int, fix_ends: bool | tuple = True):
        super().__init__()
        self.num_bends = num_bends
        self.param_names = tuple(name for name in param_names if getattr(source, name) is not None)
        self.coeffs: list[float] | None = None
        fixed = {0, num_bends - 1} if fix_ends is True else set(fix_ends or ())
        if not fixed <= set(range(num_bends)):
            raise ValueError(f"fixed bends {sorted(fixed)} are not all among the {num_bends} bends 0..{num_bends - 1}")
        for name in self.param_names:
            value = getattr(source, name).detach()
            for j in range(num_bends):
                self.register_parameter(f"{name}_{j}", nn.Parameter(value.clone(), requires_grad=j not in fixed))

    def bends(self, name: str) -> list[nn.Parameter]:
        return [getattr(self, f"{name}_{j}") for j in range(self.num_bends)]

    def at(self, name: str, coeffs: list[float] | None = None) -> torch.Tensor | None:
        """sum_j c_j w_j for tensor `name` (None when the layer has no such tensor)."""
        if name not in self.param_names:
            return None
        coeffs = self.coeffs if coeffs is None else coeffs
        if coeffs is None:
            raise RuntimeError("curve layer called without t; call it through CurveNet")
        terms = [(c, w) for c, w in zip(coeffs, self.bends(name)) if c or w.requires_grad]  # a fixed bend at 0 adds exactly 0
        out = terms[0][1] * terms[0][0]
        for c, w in terms[1:]:
            out = out + w * c
        return out


class CurveLinear(CurveModule):
    def __init__(self, source: nn.Linear, num_bends: int, fix_ends: bool | tuple = True):
        super().__init__(source, ("weight", "bias"), num_bends, fix_ends)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.at("weight"), self.at("bias"))


class CurveConv2d(CurveModule):
    def __init__(self, source: nn.Conv2d, num_bends: int, fix_ends: bool | tuple = True):
        if source.padding_mode != "zeros":
            raise TypeError(f"Conv2d with padding_mode={source.padding_mode!r} is not supported; use 'zeros'")
        super().__init__(source, ("weight", "bias"), num_bends, fix_ends)
        self.stride, self.padding, self.dilation, self.groups = source.stride, source.padding, source.dilation, source.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.at("weight"), self.at("bias"), self.stride, self.padding, self.dilation, self.groups)


class CurveConvTranspose2d(CurveModule):
    def __init__(self, source: nn.ConvTranspose2d, num_bends: int, fix_ends: bool | tuple = True):
        if source.padding_mode != "zeros":
            raise TypeError(f"ConvTranspose2d with padding_mode={source.padding_mode!r} is not supported; use 'zeros'")
        super().__init__(source, ("weight", "bias"), num_bends, fix_ends)
        self.stride, self.padding, self.output_padding = source.stride, source.padding, source.output_padding
        self.groups, self.dilation = source.groups, source.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.at("weight"), self.at("bias"), self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class CurveBatchNorm2d(CurveModule):
    """BatchNorm with curve-valued affine parameters. The running statistics are one set, not a
    point on the curve: they belong to whatever t `update_bn` last recomputed them for."""

    def __init__(self, source: nn.BatchNorm2d, num_bends: int, fix_ends: bool | tuple = True):
        if not source.track_running_stats:
            raise TypeError("BatchNorm2d without running statistics is not supported")
        super().__init__(source, ("weight", "bias"), num_bends, fix_ends)
        self.eps, self.momentum = source.eps, source.momentum
        self.register_buffer("running_mean", source.running_mean.detach().clone())
        self.register_buffer("running_var", source.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", source.num_batches_tracked.detach().clone())

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, self.at("weight"), self.at("bias"),
                            self.training, momentum or 0.0, self.eps)


CURVE_LAYERS = {nn.Linear: CurveLinear, nn.Conv2d: CurveConv2d,
                nn.ConvTranspose2d: CurveConvTranspose2d, nn.BatchNorm2d: CurveBatchNorm2d}


def to_curve_layers(module: nn.Module, num_bends: int, fix_ends: bool | tuple = True) -> nn.Module:
    """Swap, in place, every supported layer of `module` for its curve layer; refuse any other
    layer that holds parameters or buffers, naming its type."""
    if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
        raise TypeError(f"cannot make a curve of layer type {type(module).__name__}: "
                        f"supported layers are {', '.join(t.__name__ for t in CURVE_LAYERS)}")
    for name, child in module.named_children():
        convert = CURVE_LAYERS.get(type(child))
        if convert is not None:
            setattr(module, name, convert(child, num_bends, fix_ends))
        else:
            to_curve_layers(child, num_bends, fix_ends)
    return module


class CurveNet(nn.Module):
    """`model` with its weights made a curve phi(t) between two endpoint models.

    `forward(x, t)` runs the network at t (sampling t ~ U(0,1) when t is None); `weights(t)` is
    the flat weight vector at t; `export(t)` is a plain copy of `model` holding the weights at t.
    Wherever a t is taken, a list of num_bends coefficients may stand for it: the point sum_j c_j w_j,
    e.g. a point of a simplex of the bends (lib/complexes.py, simplex_point), so the bends become a simplicial complex.
    """

    def __init__(self, model: nn.Module, curve: str = "bezier", num_bends: int = 3, fix_ends: bool | tuple = True):
        super().__init__()
        self.curve_name, self.num_bends = curve, num_bends
        self.curve = make_curve(curve, num_bends)
        self.__dict__["template"] = copy.deepcopy(model)  # plain attribute: not a submodule, not saved
        self.net = to_curve_layers(copy.deepcopy(model), num_bends, fix_ends)
        self.__dict__["layers"] = [(path, m) for path, m in self.net.named_modules() if isinstance(m, CurveModule)]

    def coeffs(self, t: float | list[float]) -> list[float]:
        """c(t), or the coefficients given (a list of one per bend)."""
        if not isinstance(t, (list, tuple)):
            return self.curve(t)
        if len(t) != self.num_bends:
            raise ValueError(f"a point of this network has {self.num_bends} coefficients, got {len(t)}")
        return [float(c) for c in t]

    def set_t(self, t: float | list[float]) -> float | list[float]:
        """Point every curve layer at t (or at the coefficients given); returns t."""
        t = t if isinstance(t, (list, tuple)) else check_t(t)
        coeffs = self.coeffs(t)
        for _, layer in self.layers:
            layer.coeffs = coeffs
        return t

    def forward(self, x: torch.Tensor, t: float | None = None, **kwargs):
        """The network at t (drawn uniformly when None); `kwargs` go to the wrapped model (e.g. with_code)."""
        self.set_t(torch.rand(()).item() if t is None else t)
        return self.net(x, **kwargs)

    def import_endpoint(self, state_dict: dict, index: int, buffers: bool = False) -> None:
        """Copy a plain model's parameters into bend `index` (and, if `buffers`, its BatchNorm
        running statistics into the shared buffers)."""
        with torch.no_grad():
            for path, layer in self.layers:
                for name in layer.param_names:
                    getattr(layer, f"{name}_{index}").copy_(state_dict[f"{path}.{name}"])
                if buffers:
                    for name, buf in layer.named_buffers():
                        buf.copy_(state_dict[f"{path}.{name}"])

    def init_linear(self) -> None:
        """Put the middle bends on the straight segment between the two ends, evenly spaced."""
        k = self.num_bends
        with torch.no_grad():
            for _, layer in self.layers:
                for name in layer.param_names:
                    bends = layer.bends(name)
                    for j in range(1, k - 1):
                        a = j / (k - 1)
                        bends[j].copy_(bends[0] * (1 - a) + bends[-1] * a)

    def free_parameters(self) -> list[nn.Parameter]:
        """The parameters that training may change (the middle bends when the ends are fixed)."""
        return [p for p in self.parameters() if p.requires_grad]

    def weights(self, t: float) -> torch.Tensor:
        """The flat weight vector phi(t), in the order of the plain model's parameters."""
        state = self.state_dict_at(t)
        return torch.cat([state[name].reshape(-1) for name, _ in self.template.named_parameters()])

    def speed(self, ts: list[float]) -> torch.Tensor:
        """||phi'(t)|| at each t, in closed form: phi'(t) = sum_j c_j'(t) w_j, so its squared norm is
        c'(t)^T G c'(t) with G the Gram matrix of the bends (parameters only, float64)."""
        with torch.no_grad():
            d = torch.tensor([self.curve.derivative(t) for t in ts], dtype=torch.float64)
            return torch.einsum("ti,ij,tj->t", d, self.gram().cpu(), d).clamp_min(0).sqrt()

    def gram(self, bends: list[int] | None = None) -> torch.Tensor:
        """The Gram matrix <w_i, w_j> (float64) of the bends' parameters (all, or those listed), differentiable."""
        flat = [self.bend_vector(j).double() for j in (range(self.num_bends) if bends is None else bends)]
        return torch.stack([torch.stack([a @ b for b in flat]) for a in flat])

    def bend_vector(self, j: int) -> torch.Tensor:
        """The flat weight vector of bend j (w_0 at t=0, ..., w_{k-1} at t=1), in the order of `weights`, with its graph."""
        bends = {f"{path}.{name}": layer.bends(name)[j] for path, layer in self.layers for name in layer.param_names}
        return torch.cat([bends[name].reshape(-1) for name, _ in self.template.named_parameters()])

    def state_dict_at(self, t: float) -> dict[str, torch.Tensor]:
        """A plain model's state dict: the parameters at t, and the current BatchNorm buffers."""
        coeffs = self.coeffs(t)
        state = {}
        with torch.no_grad():
            for path, layer in self.layers:
                for name in layer.param_names:
                    state[f"{path}.{name}"] = layer.at(name, coeffs).detach().clone()
                for name, buf in layer.named_buffers():
                    state[f"{path}.{name}"] = buf.detach().clone()
        return state

    def export(self, t: float) -> nn.Module:
        """A plain copy of the model holding the weights at t (and the current BatchNorm buffers)."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.state_dict_at(t))
        device = next(self.parameters()).device
        return model.to(device).train(self.training)


class ArcLengthSampler:
    """Maps u ~ U(0,1) to t with density proportional to ||phi'(t)|| (the arc-length, or "fair",
    objective), by the inverse of the CDF tabulated on `points` values of t. `refresh()` retabulates
    from the bends as they are now; until the first refresh, t = u."""

    def __init__(self, net: CurveNet, points: int = 201):
        self.net, self.grid = net, torch.linspace(0, 1, points, dtype=torch.float64)
        self.cdf = self.grid.clone()

    def refresh(self) -> None:
        speed = self.net.speed(self.grid.tolist())
        pieces = 0.5 * (speed[1:] + speed[:-1]) * self.grid.diff()  # trapezoids: the length of each piece
        total = pieces.sum()
        if total > 0:
            self.cdf = torch.cat([torch.zeros(1, dtype=torch.float64), pieces.cumsum(0) / total])
        else:  # all bends equal: no length to follow
            self.cdf = self.grid.clone()

    def __call__(self, u: float) -> float:
        """The t whose CDF value is u (linear between table points)."""
        i = int(torch.searchsorted(self.cdf, torch.tensor([u], dtype=torch.float64), right=True).clamp(1, len(self.cdf) - 1))
        lo, hi = self.cdf[i - 1].item(), self.cdf[i].item()
        w = (u - lo) / (hi - lo) if hi > lo else 0.0
        return float(self.grid[i - 1] + w * (self.grid[i] - self.grid[i - 1]))


def segment(model: nn.Module, start: dict, end: dict) -> CurveNet:
    """The straight segment from `start` to `end` (plain state dicts of `model`): a CurveNet with 2 bends."""
    net = CurveNet(model, "polychain", 2)
    net.import_endpoint(start, 0)
    net.import_endpoint(end, 1)
    return net


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """A plain model's parameters (no BatchNorm statistics) as one flat vector, in the order of CurveNet.weights."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, CurveBatchNorm2d))]


def update_bn(model: nn.Module, batches, t: float | None = None, max_images: int | None = None) -> int:
    """Recompute BatchNorm running statistics from training batches (for a CurveNet, at t), as
    the exact average over at most `max_images` images. Returns the number of images used."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    model.train()
    seen = 0
    kwargs = {} if t is None else {"t": t}
    with torch.no_grad():
        for x in batches:
            if max_images is not None:
                x = x[: max_images - seen]
            if len(x) == 0:
                break
            for m in layers:  # weight each batch by its size, so the result is the mean over images
                m.momentum = len(x) / (seen + len(x))
            model(x, **kwargs)
            seen += len(x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)
    return seen
