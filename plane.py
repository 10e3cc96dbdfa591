"""The loss in the plane through a curve's three bends (the paper's Figure 1): `python plane.py --ckpt CURVE`.

For a curve with 3 bends w0, theta, w1 (or, with --points A B C, three endpoints of one loss group),
an orthonormal basis of their plane by Gram-Schmidt, as the paper's reference plane.py: u along
w1 - w0, v along theta - w0 minus its projection on u; coordinates in units of dx = ||w1 - w0||.
At every point w0 + x*dx*u + y*dx*v of a grid around the three points (the weights are the
parameters; BatchNorm statistics are recomputed there) the train and test loss and MSE, with
standard errors, on the same fixed images as eval_curve.py. Finished rows are kept in
<out without .json>.partial.json, so a rerun with the same settings continues; the JSON is written last.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import ae
from lib import cli
import curves
import data
from lib import training
from lib.training import (CURVE_DIR, METRICS, add_subset_args, check_compatible, evaluate_point, mean_and_se,
                            newest_curve, target_features)
from lib.files import (PLANE_FORMAT, PLANE_PARTIAL_FORMAT, UserError, ensure_dir, file_sha256, load_ae, load_curve, plain_equal,
                       write_json)

PARTIAL_FORMAT = PLANE_PARTIAL_FORMAT
PLANE_DIR = Path("runs/planes")
CURVE_SAMPLES = 101  # values of t at which the curve's projection is drawn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--ckpt", default=None, help=f"curve checkpoint with 3 bends (default: the newest .pt in {CURVE_DIR})")
    p.add_argument("--points", nargs=3, default=None, metavar=("A", "B", "C"),
                   help="instead of a curve: three endpoint checkpoints of one loss group; the plane through them "
                        "(A at the origin, B on the x axis, C above it), which shows the barriers between all three")
    p.add_argument("--grid", type=cli.at_least_two, default=21, help="grid points per side (grid x grid networks)")
    p.add_argument("--margin", type=cli.nonnegative_float, nargs="+", default=[0.2], metavar="M",
                   help="margin of the grid around the three points, as a fraction of their span in each direction: "
                        "one value for all sides, or four: LEFT RIGHT BOTTOM TOP")
    add_subset_args(p, "each grid point")
    p.add_argument("--vgg-weights", default=None, help="perceptual group only: the VGG16 weight file, when the endpoints used one")
    training.add_precision_arg(p, default="fp32")
    data.add_data_args(p, inherit=True)
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help=f"plane JSON (default: beside the curve, <curve>.plane.json; with --points, "
                                               f"{PLANE_DIR}/A-B-C.plane.json); finished rows wait in <out without .json>.partial.json "
                                               f"until the grid is complete")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the plane

def plane_basis(origin: torch.Tensor, x_end: torch.Tensor, third: torch.Tensor) -> dict:
    """Gram-Schmidt of (x_end - origin, third - origin), in float64: unit vectors u, v and dx = ||x_end - origin||."""
    u = x_end.double() - origin.double()
    dx = float(u.norm())
    if dx == 0:
        raise UserError("the plane's first two points are the same network; give three different ones")
    u = u / dx
    v = third.double() - origin.double()
    v = v - (v @ u) * u
    dy = float(v.norm())
    if dy <= 1e-9 * dx:
        raise UserError("the three networks lie on one line, so they span no plane; give three that do not")
    return {"origin": origin.double(), "u": u, "v": v / dy, "dx": dx}


def coordinates(w: torch.Tensor, basis: dict) -> tuple[float, float, float]:
    """(x, y) of `w` projected on the plane, in units of dx, and its distance from the plane, in units of dx."""
    d = w.double() - basis["origin"]
    x, y = float(d @ basis["u"]), float(d @ basis["v"])
    residual = float((d - x * basis["u"] - y * basis["v"]).norm())
    return x / basis["dx"], y / basis["dx"], residual / basis["dx"]


def weights_at(x: float, y: float, basis: dict) -> torch.Tensor:
    """The flat weight vector w0 + x*dx*u + y*dx*v (float32)."""
    return (basis["origin"] + (x * basis["dx"]) * basis["u"] + (y * basis["dx"]) * basis["v"]).float()


def grid_axes(xy: list[tuple[float, float]], grid: int, margin: list[float]) -> tuple[list[float], list[float]]:
    """Grid coordinates covering the points with margins (left, right, bottom, top) as fractions of their span."""
    left, right, bottom, top = margin
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    x_span, y_span = max(xs) - min(xs), max(ys) - min(ys)
    return (np.linspace(min(xs) - left * x_span, max(xs) + right * x_span, grid).tolist(),
            np.linspace(min(ys) - bottom * y_span, max(ys) + top * y_span, grid).tolist())


def set_weights(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy a flat weight vector into the model's parameters in place (keeping their memory format)."""
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            p.copy_(flat[i: i + p.numel()].view_as(p))
            i += p.numel()
    return model


# ---------------------------------------------------------------- the three points

def from_curve(path: Path) -> dict:
    """The plane of a 3-bend curve: points w0, theta, w1 (the bends), origin w0, x axis along w1 - w0."""
    net, ckpt = load_curve(path)
    config = ckpt["config"]
    if net.num_bends != 3:
        raise UserError(f"{path} has {net.num_bends} bends, but a plane needs exactly 3 (w0, theta, w1); "
                        f"for the plane through three endpoints pass --points A B C")
    seeds = [e["config"].get("seed") for e in config["endpoints"]]
    names = [f"w0 (seed {seeds[0]})", f"θ ({config['curve']} bend)", f"w1 (seed {seeds[1]})"]
    return {"source": "curve", "config": config, "net": net, "template": net.template,
            "weights": [net.bend_vector(j).detach() for j in range(3)], "names": ["w0", "theta", "w1"], "labels": names,
            "order": (0, 2, 1), "segments": [[0, 2]], "endpoints": [e["path"] for e in config["endpoints"]],
            "endpoint_seeds": seeds, "checkpoints": [{"path": str(path), "sha256": file_sha256(path)}]}


def from_points(paths: list[str]) -> dict:
    """The plane through three endpoints of one loss group: origin A, x axis along B - A, C above it."""
    if len({Path(p).resolve() for p in paths}) != 3:
        raise UserError(f"--points has repeats ({' '.join(paths)}); give three different endpoints")
    loaded = [load_ae(p) for p in paths]
    for path, (_, ckpt) in zip(paths[1:], loaded[1:]):
        check_compatible(loaded[0][1]["config"], ckpt["config"])
        if ckpt["config"].get("data") != loaded[0][1]["config"].get("data"):
            print(f"warning: {path} was trained on other data settings than {paths[0]}; all points are evaluated on those of {paths[0]}")
    seeds = [ckpt["config"].get("seed") for _, ckpt in loaded]
    return {"source": "points", "config": loaded[0][1]["config"], "net": None, "template": loaded[0][0],
            "weights": [curves.flat_parameters(model) for model, _ in loaded], "names": ["A", "B", "C"],
            "labels": [f"{n}: {Path(p).stem}" for n, p in zip("ABC", paths)], "order": (0, 1, 2),
            "segments": [[0, 1], [1, 2], [0, 2]], "endpoints": list(paths), "endpoint_seeds": seeds,
            "checkpoints": [{"path": str(p), "sha256": file_sha256(p)} for p in paths]}


def curve_projection(net, basis: dict) -> dict:
    """The curve sampled at CURVE_SAMPLES values of t, projected on the plane, and its largest distance from it."""
    ts = np.linspace(0.0, 1.0, CURVE_SAMPLES).tolist()
    xyr = [coordinates(net.weights(t), basis) for t in ts]
    return {"t": ts, "x": [p[0] for p in xyr], "y": [p[1] for p in xyr], "max_residual": max(p[2] for p in xyr)}


# ---------------------------------------------------------------- evaluation

def measure(model: nn.Module, ev: dict) -> dict[str, float]:
    """Mean and standard error of the train and test loss and MSE of one network (BatchNorm recomputed first)."""
    values = evaluate_point(model, ev["split_images"], ev["loss_fn"], bn_images=ev["bn_images"], batch_size=ev["batch_size"],
                            device=ev["device"], features=ev["features"], precision=ev["precision"])
    out = {}
    for name, value in values.items():
        out[name], out[f"{name}_se"] = mean_and_se(value)
    return out


def partial_path(out: Path) -> Path:
    """Where the finished rows of `out` wait until the grid is complete."""
    stem = out.name.removesuffix(".json")
    return out.with_name(f"{stem}.partial.json")


def read_partial(path: Path, key: dict) -> dict:
    """The finished work in a partial file made with the same settings; nothing (with a note) otherwise."""
    empty = {"format": PARTIAL_FORMAT, "key": key, "points": None, "rows": {}}
    if not path.exists():
        return empty
    try:
        partial = json.loads(path.read_text())
        ok = partial.get("format") == PARTIAL_FORMAT and isinstance(partial.get("rows"), dict)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        print(f"note: {path} is unreadable; starting the grid over")
        return empty
    if not plain_equal(partial.get("key"), key):
        saved = partial.get("key") if isinstance(partial.get("key"), dict) else {}
        changed = sorted(k for k in set(key) | set(saved) if not plain_equal(key.get(k), saved.get(k)))
        print(f"note: {path} was made with other settings ({', '.join(changed)}); starting the grid over")
        return empty
    print(f"resuming: {len(partial['rows'])} finished row(s) of the grid from {path}")
    return partial


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if len(args.margin) not in (1, 4):
        raise UserError(f"--margin takes one value or four (LEFT RIGHT BOTTOM TOP), got {len(args.margin)}")
    if args.points and args.ckpt:
        raise UserError("give either --ckpt (a curve's plane) or --points A B C (three endpoints' plane), not both")
    margin = args.margin * 4 if len(args.margin) == 1 else args.margin
    device = cli.pick_device(args.device)
    if args.points:
        src = from_points(args.points)
        out = Path(args.out) if args.out else PLANE_DIR / f"{'-'.join(Path(p).stem for p in args.points)}.plane.json"
    else:
        ckpt_path = Path(args.ckpt) if args.ckpt else newest_curve()
        if not args.ckpt:
            print(f"plane of {ckpt_path} (newest curve in {CURVE_DIR}; pass --ckpt to choose)")
        src = from_curve(ckpt_path)
        out = Path(args.out) if args.out else ckpt_path.with_name(ckpt_path.stem + ".plane.json")
    ensure_dir(out.parent)
    config, weights = src["config"], src["weights"]
    origin, x_end, third = (weights[i] for i in src["order"])
    basis = plane_basis(origin, x_end, third)
    points = [dict(zip(("x", "y", "residual"), coordinates(w, basis)), name=n, label=lab)
              for w, n, lab in zip(weights, src["names"], src["labels"])]
    xs, ys = grid_axes([(p["x"], p["y"]) for p in points], args.grid, margin)

    data_cfg = data.data_config(args, base=config["data"])
    train_images, test_images = (data.load_split(data_cfg, split) for split in ("train", "test"))
    # eval_curve's fixed subsets: the first images of each split (splits are already in a fixed random order)
    split_images = {"train": train_images[: args.train_images], "test": test_images[: args.test_images]}
    loss_fn = training.objective_from_config(config, args.vgg_weights, device)  # the curve's objective (noise, L1 included)
    precision = training.resolve_precision(args.precision, device, config["loss"])
    settings = {"grid": args.grid, "margin": margin, "bn_images": min(args.bn_images, len(train_images)),
                "train_images": len(split_images["train"]), "test_images": len(split_images["test"]),
                "eval_batch_size": args.eval_batch_size, "precision": precision}
    key = {**settings, "checkpoints": [c["sha256"] for c in src["checkpoints"]], "data": data_cfg, "vgg_weights": args.vgg_weights}
    partial_file = partial_path(out)
    partial = read_partial(partial_file, key)

    ev = {"split_images": split_images, "bn_images": train_images[: args.bn_images], "loss_fn": loss_fn, "batch_size": args.eval_batch_size,
          "device": device, "precision": precision, "features": target_features(loss_fn, split_images, args.eval_batch_size, device)}
    model = copy.deepcopy(src["template"]).to(device, memory_format=torch.channels_last).eval()
    network = lambda x, y: set_weights(model, weights_at(x, y, basis).to(device))  # noqa: E731
    p0, p1 = (points[i]["name"] for i in src["order"][:2])
    print(f"plane of {', '.join(p['label'] for p in points)} ({config['loss']} loss): ||{p1} - {p0}|| = {basis['dx']:.4g}, "
          f"{args.grid}x{args.grid} grid, x in [{xs[0]:.3g}, {xs[-1]:.3g}], y in [{ys[0]:.3g}, {ys[-1]:.3g}], device {device}")
    t0 = time.time()
    if partial["points"] is None:  # the three points themselves, rebuilt from their coordinates like any grid point
        partial["points"] = [measure(network(p["x"], p["y"]), ev) for p in points]
        write_json(partial_file, partial)
    bar = tqdm(total=args.grid * args.grid, initial=args.grid * len(partial["rows"]), desc="plane", unit="point",
               disable=None, dynamic_ncols=True)
    try:
        for j, y in enumerate(ys):
            if str(j) in partial["rows"]:
                continue
            row = []
            for x in xs:
                row.append(measure(network(x, y), ev))
                bar.update()
            partial["rows"][str(j)] = {name: [r[name] for r in row] for name in row[0]}
            write_json(partial_file, partial)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(partial['rows'])} of {args.grid} rows are kept in {partial_file}; "
              f"rerun the same command to continue", file=sys.stderr)
        raise
    finally:
        bar.close()

    net = src["net"]
    result = {"format": PLANE_FORMAT, "source": src["source"],
              "curve_ckpt": src["checkpoints"][0]["path"] if net is not None else None,
              "curve_sha256": src["checkpoints"][0]["sha256"] if net is not None else None,
              "curve": config.get("curve") if net is not None else None, "num_bends": net.num_bends if net is not None else None,
              "checkpoints": src["checkpoints"], "loss": config["loss"], **ae.variant_settings(config), "vgg_weights": config.get("vgg_weights"),
              "vgg_layers": config.get("vgg_layers"), "model": config["model"], "data": data_cfg,
              "endpoints": src["endpoints"], "endpoint_seeds": src["endpoint_seeds"], "settings": settings,
              "basis": {"method": "Gram-Schmidt: u = (P1 - P0) / dx, v = (P2 - P0) minus its projection on u, normalised",
                        "P0": points[src["order"][0]]["name"], "P1": points[src["order"][1]]["name"], "P2": points[src["order"][2]]["name"],
                        "dx": basis["dx"], "unit": "dx = ||P1 - P0||; the network at (x, y) is P0 + x*dx*u + y*dx*v"},
              "points": [{**p, **values} for p, values in zip(points, partial["points"])], "segments": src["segments"],
              "curve_projection": curve_projection(net, basis) if net is not None else None,
              "x": xs, "y": ys, "grid": {name: [partial["rows"][str(j)][name] for j in range(len(ys))]
                                         for name in [*METRICS, *(f"{m}_se" for m in METRICS)]},
              "seconds": time.time() - t0}
    write_json(out, result)  # its presence means the grid is complete
    partial_file.unlink(missing_ok=True)
    print_summary(result)
    print(f"\nwrote {out} ({result['seconds']:.0f}s)")
    return result


def print_summary(result: dict) -> None:
    """Loss at the three points and the lowest grid point, train and test."""
    for split in ("train", "test"):
        name = f"{split}_loss"
        grid = np.asarray(result["grid"][name])
        j, i = np.unravel_index(np.argmin(grid), grid.shape)
        at_points = ", ".join(f"{p['name']} {p[name]:.5g}" for p in result["points"])
        print(f"{name}: {at_points}; lowest grid point {grid[j, i]:.5g} at (x, y) = ({result['x'][i]:.3f}, {result['y'][j]:.3f}); "
              f"highest {grid.max():.5g}")


if __name__ == "__main__":
    cli.run(main)
