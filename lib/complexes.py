"""Mode-connecting simplicial complexes of autoencoders (Benton et al. 2021, arXiv 2102.13042), on curves.py's layers.

A complex over n fixed endpoints e_0 ... e_{n-1} and m trainable connectors c_1 ... c_m is one CurveNet with n + m
bends (the endpoints first, fixed) whose points are barycentric coefficients: its simplexes are {e_i, c_1, ..., c_m},
one per endpoint, so with m = 1 every pair e_i, e_j is joined by the path e_i -> c_1 -> e_j, and with m = 2 the
three triangles share the edge c_1 - c_2. simplex.py fits and evaluates a complex; ensemble.py samples members from it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

import ae
import curves
from lib.files import COMPLEX_FORMAT, CheckpointError, file_sha256, load_checkpoint


def simplex_point(vertices: list[int], weights: list[float], num_bends: int) -> list[float]:
    """The coefficients of the point sum_i weights[i] w_{vertices[i]} of a simplex of bends: barycentric weights
    (non-negative, summing to 1) at its vertices, zero at every other bend."""
    if len(set(vertices)) != len(vertices) or len(weights) != len(vertices) or min(weights) < 0 or abs(sum(weights) - 1) > 1e-9:
        raise ValueError(f"a simplex needs distinct vertices with barycentric weights (>= 0, sum 1), got {vertices}, {weights}")
    return [float(weights[vertices.index(j)]) if j in vertices else 0.0 for j in range(num_bends)]


def uniform_simplex(k: int, generator: torch.Generator | None = None) -> list[float]:
    """Barycentric weights of a uniform point of a simplex of k vertices: Dirichlet(1, ..., 1), drawn as k standard
    exponentials over their sum."""
    e = torch.empty(k, dtype=torch.float64).exponential_(generator=generator)
    return (e / e.sum()).tolist()


def simplex_volume_sq(gram: torch.Tensor) -> torch.Tensor:
    """The squared n-volume of the simplex of n+1 vertices whose Gram matrix is `gram`, by the Cayley-Menger
    determinant of the squared distances d_ij = G_ii + G_jj - 2 G_ij: V^2 = (-1)^(n+1) det(CM) / (2^n (n!)^2)."""
    n, diag = len(gram) - 1, gram.diagonal()
    cm = torch.ones(n + 2, n + 2, dtype=gram.dtype, device=gram.device)
    cm[0, 0] = 0
    cm[1:, 1:] = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min(0).fill_diagonal_(0)
    return (-1) ** (n + 1) * torch.linalg.det(cm) / (2**n * math.factorial(n) ** 2)


def simplexes(n_endpoints: int, connectors: int) -> list[list[int]]:
    """The simplexes of the complex, as bend indices: {e_i, c_1, ..., c_m} for each endpoint i."""
    return [[i, *range(n_endpoints, n_endpoints + connectors)] for i in range(n_endpoints)]


def build(models: list[ae.AutoEncoder], connectors: int) -> curves.CurveNet:
    """The complex of `models` (fixed, the first's BatchNorm buffers kept) and `connectors` free bends, each at the
    centroid of the endpoints (init_connector moves one to the centroid of all vertices before it)."""
    n = len(models)
    net = curves.CurveNet(ae.build_model(ae.model_config(models[0])), "polychain", n + connectors, fix_ends=tuple(range(n)))
    for i, model in enumerate(models):
        net.import_endpoint(model.state_dict(), i, buffers=i == 0)
    for j in range(n, n + connectors):
        init_connector(net, j)
    return net


def init_connector(net: curves.CurveNet, j: int) -> None:
    """Put bend j at the centroid of the bends before it (the endpoints and the connectors so far)."""
    with torch.no_grad():
        for _, layer in net.layers:
            for name in layer.param_names:
                bends = layer.bends(name)
                bends[j].copy_(torch.stack([b.detach() for b in bends[:j]]).mean(0))


def sample_point(simplex_list: list[list[int]], num_bends: int, generator: torch.Generator) -> tuple[int, list[float]]:
    """One simplex uniformly and a uniform point in it: (the simplex's index, the point's coefficients)."""
    k = int(torch.randint(len(simplex_list), (), generator=generator))
    return k, simplex_point(simplex_list[k], uniform_simplex(len(simplex_list[k]), generator), num_bends)


def barycentre(vertices: list[int], num_bends: int) -> list[float]:
    return simplex_point(vertices, [1.0 / len(vertices)] * len(vertices), num_bends)


def load(path: str | Path, check_endpoints: bool = True) -> tuple[curves.CurveNet, dict]:
    """A complex written by simplex.py: (its CurveNet, the checkpoint). With `check_endpoints`, refuse one whose
    endpoint files changed since the fit."""
    ckpt = load_checkpoint(path, COMPLEX_FORMAT, ("state_dict", "config"))
    try:
        config = ckpt["config"]
        n, m = len(config["endpoints"]), int(config["connectors"])
        net = curves.CurveNet(ae.build_model(config["model"]), "polychain", n + m, fix_ends=tuple(range(n)))
        net.load_state_dict(ckpt["state_dict"])
        endpoints = [(Path(end["path"]), end["sha256"]) for end in config["endpoints"]]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not hold a usable complex ({str(e).strip()[:150]}); refit it with simplex.py") from None
    if check_endpoints:
        for end_path, sha256 in endpoints:
            if end_path.is_file() and file_sha256(end_path) != sha256:
                raise CheckpointError(f"endpoint {end_path} changed since the complex {path} was fitted; refit it")
    return net, ckpt
