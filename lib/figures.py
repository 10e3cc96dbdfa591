"""The figures of plot.py beyond Figure 2: the paper's Figure 1 (the loss in a plane, from plane.py) and the linear
probes along the paths (eval_curve.py --probe); and the width sweep's barriers against width (report.py). Imported
only where such results are drawn."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm

from lib.training import LOSS_NAMES, PATH_STYLES, pair_label

PLANE_LEVELS = 20  # filled contour levels of a plane figure
PLANE_FLOOR = 1e-2  # the lowest level above the minimum, as a fraction of the range


def draw_probe(result: dict):
    """Linear probes of the code against t (eval_curve.py --probe): mean accuracy over class attributes
    (chance dotted), mean R^2 over continuous ones, and the code's linear CKA with the codes at the ends."""
    probes = result["probe"]
    t = probes["t"]
    panels = [(key, title) for key, title in (("accuracy", "probe accuracy (class attributes)"), ("r2", "probe R² (continuous attributes)"))
              if any(v is not None for rows in probes["paths"].values() for v in rows[key])]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.0 * (len(panels) + 1), 4.0), squeeze=False)
    axes = axes[0]
    for ax, (key, title) in zip(axes, panels):
        for path in (p for p in PATH_STYLES if p in probes["paths"]):
            rows = probes["paths"][path]
            ax.errorbar(t, rows[key], yerr=rows[f"{key}_se"], fmt=PATH_STYLES[path], color="C0", lw=1.8, capsize=2,
                        label=path.replace("_", " "))
        if key == "accuracy":
            ax.axhline(probes["chance_accuracy"], color="gray", ls=":", lw=1, label="chance (majority class)")
        ax.set_ylabel(title)
    for path in (p for p in PATH_STYLES if p in probes["paths"]):
        rows = probes["paths"][path]
        axes[-1].plot(t, rows["cka_start"], PATH_STYLES[path], color="C1", lw=1.8, label=f"{path.replace('_', ' ')}: with z(0)")
        axes[-1].plot(t, rows["cka_end"], PATH_STYLES[path], color="C2", lw=1.8, label=f"{path.replace('_', ' ')}: with z(1)")
    axes[-1].set_ylabel("linear CKA of the code at t")
    for ax in axes:
        ax.set_xlabel("t")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{pair_label(result)}, {result['loss']}: what a linear probe reads off the code, curve (solid) vs segment (dashed); "
                 f"{probes['train_images']} train / {probes['test_images']} test images", fontsize=9)
    fig.tight_layout()
    return fig


def plane_levels(values: np.ndarray) -> np.ndarray:
    """Contour levels at the minimum plus log-spaced fractions (PLANE_FLOOR to 1) of the range, as the
    paper's plane plots: fine near the low-loss valley, coarse on the hills."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    span = max(high - low, abs(low) * 1e-9, 1e-30)
    return low + span * np.concatenate([[0.0], np.geomspace(PLANE_FLOOR, 1.0, PLANE_LEVELS)])


def draw_plane(result: dict):
    """Figure 1: (a) train and (b) test loss in the plane, the three points marked, the curve solid, segments dashed."""
    x, y = np.asarray(result["x"]), np.asarray(result["y"])
    ratio = (y[-1] - y[0]) / (x[-1] - x[0])
    equal = ratio >= 1 / 3  # true geometry, unless the plane is too flat to see
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.4 + 4.6 * (min(ratio, 1.2) if equal else 0.6)))
    cmap = plt.get_cmap("jet_r")  # the paper's colours: low loss red, high loss blue
    loss_name = LOSS_NAMES.get(result["loss"], result["loss"])
    points, curve = result["points"], result.get("curve_projection")
    for ax, split, letter in zip(axes, ("train", "test"), "ab"):
        values = np.asarray(result["grid"][f"{split}_loss"], dtype=float)
        levels = plane_levels(values)
        norm = BoundaryNorm(levels, cmap.N)
        filled = ax.contourf(x, y, values, levels=levels, cmap=cmap, norm=norm)
        ax.contour(x, y, values, levels=levels, colors="k", linewidths=0.3, alpha=0.35)
        bar = fig.colorbar(filled, ax=ax, ticks=levels[::4], format="%.3g", fraction=0.046, pad=0.03)
        bar.set_label(f"{split} {loss_name}")
        for a, b in result["segments"]:
            ax.plot([points[a]["x"], points[b]["x"]], [points[a]["y"], points[b]["y"]], "--", color="k", lw=1.5,
                    label=("segments" if len(result["segments"]) > 1 else "segment") if [a, b] == result["segments"][0] else None)
        if curve:
            ax.plot(curve["x"], curve["y"], "-", color="k", lw=2, label=f"{result['curve']} curve")
        for p in points:
            ax.plot(p["x"], p["y"], "o", color="white", mec="k", ms=8, zorder=5)
            ax.annotate(f"{p['label']}\n{p[f'{split}_loss']:.3g}", (p["x"], p["y"]), textcoords="offset points", xytext=(6, 6),
                        fontsize=8, zorder=6, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7, "lw": 0})
        unit = f"units of ||{result['basis']['P1']} - {result['basis']['P0']}||"
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        if equal:
            ax.set_aspect("equal")
        ax.set_title(f"({letter}) {split}")
        ax.legend(fontsize=8, loc="upper right", framealpha=0.8)
    p0, p1 = result["basis"]["P0"], result["basis"]["P1"]
    fig.suptitle(f"{plane_label(result)}, {result['loss']} loss: the plane through {', '.join(p['name'] for p in points)} "
                 f"(origin {p0}, x axis towards {p1}; ||{p1} - {p0}|| = {result['basis']['dx']:.3g})", fontsize=10)
    fig.tight_layout()
    return fig


def plane_label(result: dict) -> str:
    """The plane's networks in words: seeds when known, else file names."""
    seeds = result.get("endpoint_seeds") or []
    if seeds and None not in seeds:
        return f"seeds {'–'.join(str(s) for s in seeds)}" + (f" ({result['curve']} curve)" if result.get("curve") else "")
    return " – ".join(Path(p).stem for p in result["endpoints"])


WIDTH_LINES = {"segment": ("segment", "C1", "--", "s"), "activations": ("aligned segment, activation matching", "C2", ":", "o"),
               "weights": ("aligned segment, weight matching", "C4", ":", "^"), "curve": ("curve", "C0", "-", "D")}


def draw_widths(group: str, rows: list[dict]):
    """A width sweep's relative test barriers (mean over pairs ± SE) against width, on a log axis: the segment, the
    aligned segment by each matcher, and the curve; `rows` as report.width_rows gives them for one loss group."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    widths = [r["width"] for r in rows]
    for key, (label, colour, style, marker) in WIDTH_LINES.items():
        points = [(r["width"], *r["barriers"][key]) for r in rows if r["barriers"].get(key)]
        if points:
            x, y, se = zip(*points)
            ax.errorbar(x, [100 * v for v in y], yerr=[200 * (e or 0) for e in se], color=colour, ls=style, marker=marker,
                        capsize=3, label=label)
    ax.set_xscale("log", base=2)
    epochs = [", ".join(map(str, r.get("epochs") or [])) for r in rows]
    mixed = len(set(epochs)) > 1  # --width-epochs: each width's training budget under its tick
    ax.set_xticks(widths, [f"{w}\n{e} epochs" if mixed else str(w) for w, e in zip(widths, epochs)])
    ax.set_xlabel("width (channels of the first layer)" + (", endpoints' epochs" if mixed else ""))
    ax.set_ylabel("relative test barrier (%)")
    ax.set_title(f"{group} autoencoders: barrier against width (mean over pairs, ± 2 SE)", fontsize=10)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
