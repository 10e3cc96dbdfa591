"""Draw evaluation and plane files: `python plot.py [runs/curves/*.eval.json runs/curves/*.plane.json]`.

Per loss group and curve type, the paper's Figure 2 (a) train loss and (b) test loss against t
for every pair, with (c) the test images' SSIM, curve (solid), segment (dashed) and, where evaluated,
aligned segment (dotted), endpoints marked; one such figure per pair too; and per pair an image strip
(the original test images, then their reconstructions along each path, t labelled) and an animated
GIF of the same as t runs from 0 to 1, the paths side by side; and per curve the fit's history
(test loss at t=0.5 per epoch, and the learning rate), marked when the fit had not converged. Plane files of plane.py
(told apart by their format) become the paper's Figure 1: train and test loss in the plane through
a curve's three bends (or three endpoints), filled contours on a log-spaced scale, the points marked,
the curve and the segment drawn. `index.json` in the output folder lists the figures written.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from PIL import Image, ImageDraw  # noqa: E402

import ae  # noqa: E402
from lib import cli  # noqa: E402
from lib.training import LOSS_NAMES, PATH_STYLES, pair_label  # noqa: E402
from lib.files import EVAL_FORMAT, PLANE_FORMAT, UserError, atomic_write, ensure_dir, read_result, save_figure, write_json  # noqa: E402

GIF_BYTES = 2_000_000  # a GIF over this is rewritten with every other frame


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("evals", nargs="*", help="evaluation JSON files from eval_curve.py and plane JSON files from plane.py, told apart "
                                           "by their format (default: runs/curves/*.eval.json and runs/curves/*.plane.json)")
    p.add_argument("--out", default="runs/figures", help="folder for the figures")
    p.add_argument("--log", action="store_true", help="log scale for the loss axes of Figure 2 (a plane's colour scale is always log-spaced)")
    p.add_argument("--se", action="store_true", help="shade +- one standard error of each loss (over images)")
    p.add_argument("--format", default="png", choices=["png", "pdf"], help="file format of the loss figures, strips and planes")
    p.add_argument("--gif-frames", type=cli.at_least_two, default=None,
                   help="frames of each animated GIF, evenly spaced over the evaluation's t grid (default: every t of the grid)")
    return p.parse_args(argv)


def group_key(result: dict) -> str:
    return f"{ae.group_of(result)}_{result['curve']}"  # the loss group (e.g. mse+noise=0.1): one Figure 2 per group


def draw_losses(results: list[dict], title: str, log: bool = False, se: bool = False):
    """Figure 2 (a, b): train and test loss vs t, and (c) the test images' SSIM where measured; curve solid, segment
    dashed, aligned segment dotted, endpoints as dots."""
    metrics = ["train_loss", "test_loss", *(["test_ssim"] if all("test_ssim" in r["paths"]["curve"] for r in results) else [])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    loss_name = LOSS_NAMES.get(results[0]["loss"], results[0]["loss"])
    for ax, metric, letter in zip(axes, metrics, "abc"):
        split, what = metric.split("_")
        for i, result in enumerate(results):
            t, color = np.asarray(result["t"]), colors[i % len(colors)]
            for path in (p for p in PATH_STYLES if p in result["paths"]):
                values = np.asarray(result["paths"][path][metric])
                ax.plot(t, values, PATH_STYLES[path], color=color, lw=1.8,
                        label=f"{pair_label(result)}: {result['curve'] if path == 'curve' else path.replace('_', ' ')}")
                if se:
                    err = np.asarray(result["paths"][path][f"{metric}_se"])
                    ax.fill_between(t, values - err, values + err, color=color, alpha=0.12, lw=0)
                ax.plot([t[0], t[-1]], [values[0], values[-1]], "o", color=color, ms=6)
        ax.set_xlabel("t")
        ax.set_ylabel(f"{split} {loss_name if what == 'loss' else what.upper()}")
        ax.set_title(f"({letter}) {split}")
        ax.set_xlim(0, 1)
        if log and what == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_strip(result: dict, npz: dict):
    """Originals, then reconstructions along the curve, the segment and the aligned segment where
    there is one (rows = images)."""
    columns = npz.get("columns", np.arange(len(npz["t"])))  # the npz holds every t of the grid; the strip shows its columns
    t, paths = npz["t"][columns], [p for p in PATH_STYLES if p in npz]
    fig, axes = plt.subplots(1, 1 + len(paths), figsize=(2 + len(paths) * len(t), 0.9 * len(npz["originals"]) + 1.2),
                             gridspec_kw={"width_ratios": [1] + [len(t)] * len(paths)})
    titles = ["original", *(f"along the {result['curve']} curve" if p == "curve" else f"along the {p.replace('_', ' ')}" for p in paths)]
    for ax, key, title in zip(axes, ("originals", *paths), titles):
        images = npz[key] if key == "originals" else np.swapaxes(npz[key][columns], 0, 1)  # -> [images, columns, ...]
        images = images[:, None] if key == "originals" else images
        rows = [np.concatenate(list(row.transpose(0, 2, 3, 1)), axis=1) for row in images]
        ax.imshow(np.concatenate(rows, axis=0))
        ax.set_title(title, fontsize=10)
        ax.set_yticks([])
        size = images.shape[-1]
        if key == "originals":
            ax.set_xticks([])
        else:
            ax.set_xticks([(i + 0.5) * size for i in range(len(t))], [f"t={v:.2f}" for v in t], fontsize=8)
    fig.suptitle(f"{pair_label(result)}, {ae.group_of(result)} group", fontsize=11)
    fig.tight_layout()
    return fig


def write_gif(result: dict, npz: dict, path: Path, frames: int | None = None) -> Path:
    """The reconstructions as t runs from 0 to 1, one frame per t of the evaluation's grid (or `frames` of them): the
    originals at the left, then each path's (rows = images), the pair and t above, each path's test loss at t below."""
    keys, n, size = ["originals", *(p for p in PATH_STYLES if p in npz)], len(npz["t"]), npz["originals"].shape[-1]
    names = ["original", *(f"{result['curve']} curve" if p == "curve" else p.replace("_", " ") for p in keys[1:])]
    index = np.unique(np.linspace(0, n - 1, min(frames or n, n)).round().astype(int))
    while True:
        images = []
        for i in index:
            k = int(np.argmin(np.abs(np.asarray(result["t"]) - npz["t"][i])))  # the grid point of this frame's losses
            frame = Image.new("RGB", (6 + 106 * len(keys), 44 + size * len(npz["originals"])), "white")
            draw = ImageDraw.Draw(frame)
            draw.text((6, 2), f"{pair_label(result).replace(chr(8211), '-')}, {ae.group_of(result)}:  t = {npz['t'][i]:.3f}", fill="black")
            for j, key in enumerate(keys):  # a column of 100 pixels each: room for the labels
                frame.paste(Image.fromarray(np.concatenate(list((npz[key][i] if j else npz[key]).transpose(0, 2, 3, 1)))), (6 + 106 * j, 28))
                draw.text((6 + 106 * j, 15), names[j], fill="black")
                if j:
                    draw.text((6 + 106 * j, frame.height - 13), f"loss {result['paths'][key]['test_loss'][k]:.4g}", fill="black")
            images.append(frame.quantize(128, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE))  # 20x faster than median cut
        atomic_write(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:], loop=0,
                                                    duration=[800 if i in (0, n - 1) else 80 for i in index]))  # a pause at each end
        if path.stat().st_size <= GIF_BYTES or len(index) <= 2:
            return path
        print(f"note: {path.name} is {path.stat().st_size / 1e6:.1f} MB with {len(index)} frames; writing every other frame")
        index = np.unique(np.r_[index[::2], index[-1]])


def draw_fit(result: dict):
    """The fit's history: test loss at t=0.5 per epoch (epoch 0 = the straight segment's middle),
    the last quarter shaded, the learning rate on a second axis; the title says if it converged."""
    fit = result["fit"]
    history = fit["history"]
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(epochs, [h["test_loss_t05"] for h in history], "o-", color="C0", label="test loss at t = 0.5")
    ax.plot(epochs[1:], [h["train_loss"] for h in history[1:]], "s--", color="C1", ms=4, label="train E_t loss")
    ax.axvspan(epochs[-1] - fit["last_quarter_epochs"], epochs[-1], color="0.85", zorder=0, label="last quarter")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(LOSS_NAMES.get(result["loss"], result["loss"]))
    rates = [(h["epoch"], h["lr"]) for h in history if h.get("lr") is not None]
    if rates:
        lr_ax = ax.twinx()
        lr_ax.plot(*zip(*rates), ":", color="0.4", label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel(f"learning rate ({fit['schedule']} schedule)", color="0.4")
    state = "converged" if fit["converged"] else "NOT CONVERGED"
    ax.set_title(f"{pair_label(result)}, {result['loss']}, {result['curve']} fit: {state}\n"
                 f"last {fit['last_quarter_epochs']} epoch(s): test loss at t = 0.5 fell {100 * fit['last_quarter_drop']:.1f}%",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    paths = args.evals or sorted(str(p) for pattern in ("*.eval.json", "*.plane.json") for p in Path("runs/curves").glob(pattern))
    if not paths:
        raise UserError("no evaluation or plane files given or found in runs/curves; run eval_curve.py (or plane.py) first")
    loaded = [read_result(p, (EVAL_FORMAT, PLANE_FORMAT)) for p in paths]
    results = [r for r in loaded if r["format"] == EVAL_FORMAT]
    out = ensure_dir(args.out)
    written = []
    groups = defaultdict(list)
    for result in results:
        groups[group_key(result)].append(result)
    for key, members in sorted(groups.items()):
        fig = draw_losses(members, f"{ae.group_of(members[0])} autoencoders: {members[0]['curve']} curves vs segments", args.log, args.se)
        written.append(save_figure(fig, out / f"fig2_{key}.{args.format}", dpi=130))
    for result in results:
        stem = Path(result["_path"]).name.removesuffix(".eval.json")
        fig = draw_losses([result], f"{pair_label(result)}, {result['loss']}: {result['curve']} curve vs segment", args.log, args.se)
        written.append(save_figure(fig, out / f"pair_{stem}.{args.format}", dpi=130))
        if result.get("fit"):
            written.append(save_figure(draw_fit(result), out / f"fit_{stem}.{args.format}", dpi=110))
        if result.get("probe", {}).get("paths"):
            fig = cli.optional("figures", "the probe figure of an eval_curve.py --probe evaluation").draw_probe(result)
            written.append(save_figure(fig, out / f"probe_{stem}.{args.format}", dpi=110))
        npz_path = Path(result["_path"]).with_name(result["files"]["npz"])
        try:
            with np.load(npz_path, allow_pickle=False) as f:
                npz = {k: f[k] for k in ("t", "originals", "curve", "segment", "columns", "aligned_segment")
                       if k in f.files or k not in ("columns", "aligned_segment")}
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"cannot read reconstructions {npz_path}: {e}; rerun eval_curve.py") from None
        written.append(save_figure(draw_strip(result, npz), out / f"strip_{stem}.{args.format}", dpi=110))
        written.append(write_gif(result, npz, out / f"recon_{stem}.gif", args.gif_frames))
    for result in (r for r in loaded if r["format"] == PLANE_FORMAT):
        fig = cli.optional("figures", "the figure of a plane.py file").draw_plane(result)
        written.append(save_figure(fig, out / f"plane_{Path(result['_path']).name.removesuffix('.plane.json')}.{args.format}", dpi=120))
    for path in written:
        print(f"wrote {path}")
    write_json(out / "index.json", {"figures": [str(p) for p in written]})  # last: its presence means every figure is there
    return written


if __name__ == "__main__":
    cli.run(main)
