"""Function-space similarity of autoencoders (after Fort et al. 2019): `python function_space.py --ckpts runs/ae --out DIR`.

A network's function-space vector is its reconstruction (eval mode) of the first --images
validation images. For every pair of networks: the cosine similarity of their weights (parameters,
no BatchNorm statistics), their disagreement (mean squared difference per pixel of their
reconstructions) and its ratio to their own errors (disagreement / mean of the two networks' MSE
per pixel against the images), all from float64 Gram matrices. Writes <out>/heatmaps.png,
<out>/embedding.png (t-SNE or PCA of the vectors, each trajectory a line through its points),
<out>/disagreement_t.png (with --curves) and, last, <out>/function_space.json (format
aemc-function-space-v1), whose `summary` compares endpoints, curve, segment, FGE and snapshot pairs.

--ckpts takes autoencoder checkpoints and folders of them (their *.pt and */*.pt, by name; other
files are skipped). Each one's kind comes from its config: `snapshot` (train_ae.py --snapshots; its
run's trajectory, position = fractional epoch), `curve_point` (eval_curve.py --save-t; position t),
`fge_member` (ensemble.py; trajectory = its start endpoint, position = iteration), else an endpoint
(position = its epochs). Each --curves curve adds --t-points values of t on the curve and on its
straight segment. Every network's BatchNorm statistics are recomputed (for curve points at t) on the
same first --bn-images training images, as eval_curve.py and ensemble.py do; --own-bn keeps the
checkpoints' own (a running average during training, which for short runs still remembers the
initial statistics).
"""
from __future__ import annotations

import argparse
import functools
import json
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
import curves  # noqa: E402
import data  # noqa: E402
from lib import images as image_files  # noqa: E402
from lib import cli  # noqa: E402
from lib.training import mean_and_se, recompute_bn, segment_of  # noqa: E402
from lib.files import (FUNCTION_SPACE_FORMAT, FormatError, UserError, ensure_dir, load_ae, load_curve, save_figure,  # noqa: E402
                       write_json)

FS_FORMAT = FUNCTION_SPACE_FORMAT
DEFAULT_OUT = Path("runs/function_space")
CHANNELS_LAST = torch.channels_last
CATEGORIES = {  # summary category: which pairs it holds
    "endpoints": "pairs of independent endpoints",
    "curve": "pairs of points of one curve, its two ends (the endpoints) left out",
    "segment": "pairs of points of one straight segment, its two ends left out",
    "fge": "pairs of FGE members of one run",
    "snapshots": "pairs of snapshots of one training trajectory",
}
DEFINITIONS = {
    "weight_cosine": "cosine similarity of the flat parameter vectors (no BatchNorm statistics)",
    "disagreement": "mean over images, channels and pixels of the squared difference of the two networks' reconstructions",
    "ratio_to_error": "disagreement_ij / ((mse_i + mse_j) / 2), mse_i the mean squared error per pixel of network i against the images",
    "se": "standard error of the mean over pairs (pairs sharing a network are not independent)",
    **{f"summary.{name}": text for name, text in CATEGORIES.items()},
}
MARKERS = {"endpoint": "*", "snapshot": "o", "fge member": "^", "curve point": "s", "segment point": "D"}
GROUP_CMAPS = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuBuGn", "RdPu", "BuGn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--ckpts", nargs="+", default=[], metavar="PATH",
                   help="autoencoder checkpoints, or folders of them (their *.pt and */*.pt, resume files skipped)")
    p.add_argument("--curves", nargs="+", default=[], metavar="CURVE",
                   help="curve checkpoints (fit_curve.py): points on each curve and on its straight segment join the comparison")
    p.add_argument("--t-points", type=cli.at_least_two, default=11, help="values of t in [0, 1] on each curve and segment")
    p.add_argument("--bn-images", type=cli.positive_int, default=500,
                   help="training images on which every network's BatchNorm statistics are recomputed")
    p.add_argument("--own-bn", action="store_true",
                   help="keep the checkpoints' own BatchNorm statistics (curve and segment points are always recomputed at t)")
    p.add_argument("--images", type=cli.positive_int, default=64,
                   help="validation images (the first of the split) whose reconstructions are each network's function-space vector")
    p.add_argument("--embedding", default="tsne", choices=("tsne", "pca"),
                   help="2-D embedding of the function-space vectors: t-SNE (scikit-learn) or PCA")
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=256, help="images per forward pass")
    data.add_data_args(p, inherit=True)
    cli.add_device_arg(p)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the networks

def checkpoint_files(paths: list[str]) -> list[tuple[Path, bool]]:
    """Each given file (given: True), and the *.pt and */*.pt of each given folder by name (given:
    False), without resume files or repeats."""
    found, seen = [], set()
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in [*path.glob("*.pt"), *path.glob("*/*.pt")]
                            if p.is_file() and not p.name.endswith(".resume.pt"))
            if not inside:
                raise UserError(f"folder {path} holds no .pt checkpoints; pass autoencoder checkpoints or folders of them")
            found += [(p, False) for p in inside]
        else:
            found.append((path, True))
    unique = []
    for path, given in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, given))
    return unique


def describe(path: Path, config: dict) -> dict:
    """Kind, group (key, label and type) and position along the group of a checkpoint, from its config."""
    def entry(key: str, fields: tuple[str, ...]) -> dict:
        value = config[key]
        if not isinstance(value, dict) or any(not isinstance(value.get(f), (int, float)) for f in fields):
            raise UserError(f"{path} has a malformed '{key}' entry in its config ({value!r}); recreate the checkpoint")
        return value

    run = {k: v for k, v in config.items() if k != "snapshot"}  # a run's endpoint and its snapshots share this
    run_key = ("run", json.dumps(run, sort_keys=True, default=str))
    if "snapshot" in config:
        snap = entry("snapshot", ("epoch",))
        return {"kind": "snapshot", "key": run_key, "label": f"seed {config.get('seed')}", "type": "seed",
                "position": float(snap["epoch"])}
    if "curve_point" in config:
        point = entry("curve_point", ("t",))
        ends = [Path(str(e)).stem for e in point.get("endpoints") or []]
        return {"kind": "curve point", "key": ("curve point", json.dumps(point.get("endpoints")), str(point.get("curve"))),
                "label": f"{point.get('curve')} curve {'-'.join(ends)}", "type": "curve", "position": float(point["t"])}
    if "fge_member" in config:
        member = entry("fge_member", ())
        position = member.get("iteration", member.get("index"))
        if not isinstance(position, (int, float)):
            raise UserError(f"{path} has a malformed 'fge_member' entry in its config ({member!r}); recreate the checkpoint")
        return {"kind": "fge member", "key": ("fge", str(member.get("from"))), "label": f"FGE from {Path(str(member.get('from'))).stem}",
                "type": "fge", "position": float(position)}
    epochs = config.get("epochs")
    return {"kind": "endpoint", "key": run_key, "label": f"seed {config.get('seed')}", "type": "seed",
            "position": float(epochs) if isinstance(epochs, (int, float)) else math.nan}


def same_model(first: tuple[Path, dict], other: tuple[Path, dict]) -> None:
    """Refuse two networks of different architectures, naming both files."""
    (a, config_a), (b, config_b) = first, other
    if config_a.get("model") != config_b.get("model"):
        raise UserError(f"{a} and {b} have different architectures ({config_a.get('model')} vs {config_b.get('model')}); "
                        f"compare networks of one architecture")


def collect(args: argparse.Namespace) -> tuple[list[dict], list[tuple[Path, dict]], list[tuple[Path, curves.CurveNet, float]]]:
    """Every network to compare (name, source, kind, group, position, and how to build it), ordered
    by group and position; the configs read, and the curves."""
    records, configs, nets = [], [], []
    for path, given in checkpoint_files(args.ckpts):
        try:
            model, ckpt = load_ae(path)
        except FormatError as e:
            if given:
                raise FormatError(f"{e}; --ckpts takes autoencoder checkpoints (curves go to --curves)") from None
            print(f"skipping {path}: {e}")
            continue
        configs.append((path, ckpt["config"]))
        records.append({"name": str(path), "source": str(path), **describe(path, ckpt["config"]), "own_bn": True,
                        "noise": ae.variant_settings(ckpt["config"])["noise"], "build": lambda model=model: model})
    for path in map(Path, args.curves):
        net, ckpt = load_curve(path, check_endpoints=False)
        configs.append((path, ckpt["config"]))
        nets.append((path, net, ae.variant_settings(ckpt["config"])["noise"]))
    if not configs:
        raise UserError("no networks to compare; pass --ckpts (autoencoder checkpoints or folders) and/or --curves")
    for other in configs[1:]:
        same_model(configs[0], other)
    return records, configs, nets


def curve_records(nets: list[tuple[Path, curves.CurveNet, float]], ts: list[float]) -> list[dict]:
    """Points at every t on each curve and on its straight segment (their BatchNorm statistics are
    whatever the curve holds: to be recomputed)."""
    records = []
    for path, net, noise in nets:
        for name, path_net in (("curve", net), ("segment", segment_of(net))):
            for t in ts:
                records.append({"name": f"{path}:{name}@t={t:.3f}", "source": str(path), "kind": f"{name} point",
                                "key": (name, str(path)), "label": f"{name} {path.stem}", "type": name, "position": t,
                                "own_bn": False, "noise": noise, "build": functools.partial(path_net.export, t)})
    return records


def ordered(records: list[dict]) -> list[dict]:
    """Records grouped in order of first appearance, by position within a group (an endpoint after
    its snapshots); group labels made unique."""
    first, labels = {}, {}
    for r in records:
        if r["key"] not in first:
            first[r["key"]] = len(first)
            label, n = r["label"], 2
            while label in labels.values():
                label, n = f"{r['label']} ({n})", n + 1
            labels[r["key"]] = label
    for r in records:
        r["group"] = labels[r["key"]]
    return sorted(records, key=lambda r: (first[r["key"]], r["position"] if math.isfinite(r["position"]) else math.inf,
                                          r["kind"] == "endpoint"))


# ---------------------------------------------------------------- vectors and matrices

@torch.no_grad()
def function_vector(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                    bn_images: torch.Tensor | None = None, noise: float = 0.0) -> tuple[torch.Tensor, float]:
    """The model's reconstructions (eval mode) of `images` as one flat float32 vector on the CPU, and
    its mean squared error per pixel against them; first its BatchNorm statistics are recomputed on
    `bn_images` when given (training.recompute_bn, with its group's input `noise`)."""
    model = model.to(device, memory_format=CHANNELS_LAST)
    if bn_images is not None:
        recompute_bn(model, bn_images, noise, batch_size=batch_size, device=device)
    model.eval()
    recon, sq = [], 0.0
    for x in data.batches(images, batch_size, device=device, memory_format=CHANNELS_LAST):
        r = model(x).float()
        sq += torch.linalg.vector_norm(r - x, dtype=torch.float64).item() ** 2
        recon.append(r.reshape(-1).cpu())
    flat = torch.cat(recon)
    return flat, sq / flat.numel()


def gram64(rows: torch.Tensor, center: bool = False, chunk: int = 1 << 18) -> np.ndarray:
    """rows @ rows.T in float64 (after subtracting the mean row when `center`), a chunk of columns at a time."""
    gram = torch.zeros(len(rows), len(rows), dtype=torch.float64)
    for start in range(0, rows.shape[1], chunk):
        block = rows[:, start:start + chunk].double()
        if center:
            block -= block.mean(0)
        gram += block @ block.T
    return ((gram + gram.T) / 2).numpy()  # exactly symmetric (a matmul need not sum (i, j) and (j, i) alike)


def cosine_matrix(weights: torch.Tensor) -> np.ndarray:
    """Pairwise cosine similarity of the rows of `weights`."""
    gram = gram64(weights)
    norms = np.sqrt(np.diag(gram))
    return gram / np.outer(norms, norms)


def distance_matrix(centered_gram: np.ndarray, dim: int) -> np.ndarray:
    """Mean squared difference per coordinate between every two rows, from their centred Gram matrix."""
    d = np.diag(centered_gram)
    out = np.maximum(d[:, None] + d[None, :] - 2 * centered_gram, 0.0) / dim
    np.fill_diagonal(out, 0.0)
    return out


def ratio_matrix(disagreement: np.ndarray, mse: np.ndarray) -> np.ndarray:
    """disagreement_ij / ((mse_i + mse_j) / 2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return disagreement / ((mse[:, None] + mse[None, :]) / 2)


def embedding(centered_gram: np.ndarray, method: str) -> tuple[np.ndarray, dict]:
    """2-D coordinates of the vectors whose centred Gram matrix is given: PCA (the top two principal
    axes, exactly), or t-SNE of their exact coordinates in their own span (fixed seed)."""
    values, vectors = np.linalg.eigh(centered_gram)
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    vectors = vectors * np.where(vectors[np.abs(vectors).argmax(0), range(len(values))] < 0, -1, 1)  # a fixed sign per axis
    coords = vectors * np.sqrt(values)
    n = len(coords)
    if method == "pca":
        total = values.sum()
        return coords[:, :2], {"method": "pca", "explained_variance": (values[:2] / total).tolist() if total > 0 else [0.0, 0.0]}
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))  # t-SNE needs perplexity < n; ~n/3 keeps small sets readable
    keep = max(2, int((values > 1e-12 * max(values[0], 1e-300)).sum()))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=0).fit_transform(coords[:, :keep])
    return xy, {"method": "tsne", "perplexity": perplexity, "random_state": 0}


def require_sklearn() -> None:
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        raise UserError("--embedding tsne needs scikit-learn: pip install scikit-learn (or pass --embedding pca)") from None


# ---------------------------------------------------------------- the summary

def category_pairs(records: list[dict], category: str) -> list[tuple[int, int]]:
    """The pairs (i < j) of one summary category (see CATEGORIES)."""
    def inner(r: dict) -> bool:
        return 0.0 < r["position"] < 1.0

    test: Callable[[dict, dict], bool] = {
        "endpoints": lambda a, b: a["kind"] == b["kind"] == "endpoint",
        "curve": lambda a, b: a["group"] == b["group"] and a["kind"] == b["kind"] == "curve point" and inner(a) and inner(b),
        "segment": lambda a, b: a["group"] == b["group"] and a["kind"] == b["kind"] == "segment point" and inner(a) and inner(b),
        "fge": lambda a, b: a["group"] == b["group"] and a["kind"] == b["kind"] == "fge member",
        "snapshots": lambda a, b: a["group"] == b["group"] and a["kind"] == b["kind"] == "snapshot",
    }[category]
    return [(i, j) for i in range(len(records)) for j in range(i + 1, len(records)) if test(records[i], records[j])]


def summarize(records: list[dict], matrices: dict[str, np.ndarray]) -> dict:
    """Mean and standard error over the pairs of each category, of each matrix; and the ratios of the
    endpoints' mean disagreement to the curves' and to FGE's (None where a category has no pairs)."""
    out = {}
    for category in CATEGORIES:
        pairs = category_pairs(records, category)
        if not pairs:
            out[category] = None
            continue
        i, j = map(list, zip(*pairs))
        out[category] = {"count": len(pairs)}
        for name, matrix in matrices.items():
            mean, se = mean_and_se(torch.from_numpy(matrix[i, j]))
            out[category][name] = {"mean": mean, "se": se if len(pairs) > 1 else None}  # no spread from one pair

    def ratio(a: str, b: str) -> float | None:
        if out[a] is None or out[b] is None or out[b]["disagreement"]["mean"] == 0:
            return None
        return out[a]["disagreement"]["mean"] / out[b]["disagreement"]["mean"]

    out["endpoints_over_curve"] = ratio("endpoints", "curve")
    out["endpoints_over_fge"] = ratio("endpoints", "fge")
    return out


def along_paths(records: list[dict], disagreement: np.ndarray, curve_files: list[str]) -> dict:
    """For each --curves curve: disagreement of phi(t) with phi(0) and with phi(1) against t, on the curve and on its segment."""
    out = {}
    for source in curve_files:
        for name in ("curve", "segment"):
            rows = [i for i, r in enumerate(records) if r["source"] == source and r["kind"] == f"{name} point"]
            out.setdefault(source, {"t": [records[i]["position"] for i in rows]})
            out[source][name] = {"to_start": disagreement[rows[0], rows].tolist(), "to_end": disagreement[rows[-1], rows].tolist()}
    return out


# ---------------------------------------------------------------- figures

def group_spans(groups: list[str]) -> list[tuple[str, int, int]]:
    """(label, first row, one past the last row) of each run of equal group labels."""
    spans = []
    for i, g in enumerate(groups):
        if spans and spans[-1][0] == g:
            spans[-1] = (g, spans[-1][1], i + 1)
        else:
            spans.append((g, i, i + 1))
    return spans


def draw_heatmaps(result: dict) -> plt.Figure:
    """Weight cosine and disagreement side by side, rows in the same order, group boundaries marked and labelled."""
    spans = group_spans(result["groups"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.4))
    panels = (("weight_cosine", "weight cosine similarity", "viridis"), ("disagreement", "disagreement (mean sq. diff. per pixel)", "magma"))
    for ax, (key, title, cmap) in zip(axes, panels):
        image = ax.imshow(np.asarray(result["matrices"][key], dtype=float), cmap=cmap, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for _, start, _ in spans[1:]:
            ax.axhline(start - 0.5, color="white", lw=1.2)
            ax.axvline(start - 0.5, color="white", lw=1.2)
        centres = [(start + stop - 1) / 2 for _, start, stop in spans]
        ax.set_xticks(centres, [g for g, _, _ in spans], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(centres, [g for g, _, _ in spans], fontsize=8)
        ax.set_title(title)
    fig.suptitle(f"{len(result['names'])} networks, {result['settings']['images']} validation images")
    fig.tight_layout()
    return fig


def shades(positions: list[float]) -> np.ndarray:
    """Positions along a group scaled to [0, 1] (1 where a group has one position, or none is known)."""
    pos = np.asarray(positions, dtype=float)
    finite = pos[np.isfinite(pos)]
    if len(finite) == 0 or finite.max() == finite.min():
        return np.ones(len(pos))
    return np.where(np.isfinite(pos), (pos - finite.min()) / (finite.max() - finite.min()), 1.0)


def draw_embedding(result: dict) -> plt.Figure:
    """Each group in its own colour map, darker further along it, a line through its points in order
    (dashed for segments); markers by kind."""
    xy = np.asarray(result["embedding"]["xy"], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 7))
    for k, (group, start, stop) in enumerate(group_spans(result["groups"])):
        cmap = plt.get_cmap(GROUP_CMAPS[k % len(GROUP_CMAPS)])
        shade = shades(result["positions"][start:stop])
        kind = result["group_types"][start]
        if stop - start > 1:
            ax.plot(xy[start:stop, 0], xy[start:stop, 1], "--" if kind == "segment" else "-", color=cmap(0.65), lw=1, alpha=0.7, zorder=1)
        for i in range(start, stop):
            marker = MARKERS[result["kinds"][i]]
            ax.scatter(xy[i, 0], xy[i, 1], color=cmap(0.3 + 0.65 * shade[i - start]), marker=marker, s=150 if marker == "*" else 40,
                       edgecolors="black", linewidths=0.4, zorder=3 if marker == "*" else 2, label=group if i == start else None)
    ax.legend(fontsize=8, loc="best")
    method = result["embedding"]["method"]
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"reconstructions of {result['settings']['images']} validation images, {method}\n"
                 "darker = further along (epoch, t, iteration); * endpoint, o snapshot, ^ FGE, s curve, D segment", fontsize=9)
    fig.tight_layout()
    return fig


def draw_disagreement_t(result: dict) -> plt.Figure:
    """Disagreement of phi(t) with phi(0) and with phi(1) against t: curve solid, segment dashed; one panel per curve."""
    paths = result["disagreement_t"]
    fig, axes = plt.subplots(1, len(paths), figsize=(5.5 * len(paths), 4.2), squeeze=False)
    for ax, (source, p) in zip(axes[0], paths.items()):
        for name, style in (("curve", "-"), ("segment", "--")):
            ax.plot(p["t"], p[name]["to_start"], style, color="C0", lw=1.8, label=f"{name}: with phi(0)")
            ax.plot(p["t"], p[name]["to_end"], style, color="C1", lw=1.8, label=f"{name}: with phi(1)")
        ax.set_title(Path(source).name, fontsize=9)
        ax.set_xlabel("t")
        ax.set_ylabel("disagreement (mean sq. diff. per pixel)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def print_table(result: dict) -> None:
    s = result["summary"]
    print(f"\nfunction space of {len(result['names'])} networks, reconstructions of {result['settings']['images']} validation images:")
    print(f"{'pairs':12} {'count':>6} {'disagreement':>22} {'/ own error':>18} {'weight cosine':>18}")
    for category in CATEGORIES:
        if s[category] is None:
            print(f"{category:12} {'-':>6}")
            continue
        cells = [f"{s[category][k]['mean']:.4g}" + ("" if s[category][k]["se"] is None else f" ± {s[category][k]['se']:.2g}")
                 for k in ("disagreement", "ratio_to_error", "weight_cosine")]
        print(f"{category:12} {s[category]['count']:6d} {cells[0]:>22} {cells[1]:>18} {cells[2]:>18}")
    for key in ("endpoints_over_curve", "endpoints_over_fge"):
        print(f"{key.replace('_', ' ')}: {'-' if s[key] is None else f'{s[key]:.3g}'}")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.embedding == "tsne":
        require_sklearn()
    device = cli.pick_device(args.device)
    t0 = time.time()
    records, configs, nets = collect(args)
    data_cfg = data.data_config(args, base=configs[0][1].get("data"))
    if any(config.get("data") != configs[0][1].get("data") for _, config in configs):
        print(f"warning: the networks were trained on different data settings; all are compared on those of {configs[0][0]}")
    images, source = image_files.validation_images(data_cfg, args.images)
    ts = np.linspace(0.0, 1.0, args.t_points).tolist()
    bn_images = None if args.own_bn and not nets else data.load_split(data_cfg, "train")[: args.bn_images]
    records += curve_records(nets, ts)
    records = ordered(records)
    if len(records) < 2:
        raise UserError(f"only {len(records)} network to compare; pass at least two checkpoints, or a curve")
    out = ensure_dir(args.out)

    recon, weights, mse = [], [], []
    for r in tqdm(records, desc="networks", leave=False, disable=None, dynamic_ncols=True):
        model = r.pop("build")()
        recompute = not (args.own_bn and r["own_bn"])
        vector, error = function_vector(model, images, args.eval_batch_size, device, bn_images if recompute else None, r["noise"])
        recon.append(vector)
        weights.append(curves.flat_parameters(model).float().cpu())
        mse.append(error)
        del model
    centered = gram64(torch.stack(recon), center=True)
    mse = np.asarray(mse)
    disagreement = distance_matrix(centered, recon[0].numel())
    matrices = {"weight_cosine": cosine_matrix(torch.stack(weights)), "disagreement": disagreement,
                "ratio_to_error": ratio_matrix(disagreement, mse)}
    xy, embedded = embedding(centered, args.embedding)
    del recon, weights

    result = {"format": FS_FORMAT, "definitions": DEFINITIONS,
              "names": [r["name"] for r in records], "sources": [r["source"] for r in records], "kinds": [r["kind"] for r in records],
              "groups": [r["group"] for r in records], "group_types": [r["type"] for r in records],
              "positions": [r["position"] for r in records], "mse": mse.tolist(),
              "matrices": {name: m.tolist() for name, m in matrices.items()},
              "embedding": {**embedded, "xy": xy.tolist()}, "disagreement_t": along_paths(records, disagreement, [str(p) for p, *_ in nets]),
              "model": configs[0][1].get("model"), "data": data_cfg,
              "loss": configs[0][1].get("loss") if len({config.get("loss") for _, config in configs}) == 1 else None,
              "settings": {"images": len(images), "split": "valid", "images_source": source, "values_per_network": int(len(images) * images[0].numel()),
                           "bn_images": None if bn_images is None else len(bn_images), "own_bn": args.own_bn,
                           "t_points": args.t_points if nets else None,
                           "embedding": args.embedding, "eval_batch_size": args.eval_batch_size, "device": str(device)},
              "summary": summarize(records, matrices)}
    files = {"heatmaps_png": "heatmaps.png", "embedding_png": "embedding.png"}
    figures = [("heatmaps_png", draw_heatmaps), ("embedding_png", draw_embedding)]
    if nets:
        files["disagreement_t_png"] = "disagreement_t.png"
        figures.append(("disagreement_t_png", draw_disagreement_t))
    for key, draw in figures:
        fig = draw(result)
        save_figure(fig, out / files[key], dpi=130)
    result["files"] = files
    result["seconds"] = time.time() - t0
    write_json(out / "function_space.json", result)  # last: its presence means the run and its figures are complete
    print_table(result)
    print(f"\nwrote {out / 'function_space.json'}, {', '.join(files.values())} ({result['seconds']:.0f}s)")
    return result


if __name__ == "__main__":
    cli.run(main)
