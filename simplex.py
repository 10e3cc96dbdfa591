"""Join a loss group's endpoints by one low-loss simplicial complex: `python simplex.py --ckpts A B C`.

Benton et al. 2021 (arXiv 2102.13042): the endpoints are fixed vertices, --connectors m trainable vertices
c_1 ... c_m, and the complex is the simplexes {endpoint_i, c_1, ..., c_m} (lib/complexes.py). With m = 1 every
pair is joined by the path endpoint_i -> c_1 -> endpoint_j; with m = 2 three triangles share the edge c_1 - c_2.
Each training step takes one simplex uniformly and a uniform point in it (Dirichlet(1)); the loss is the group's
objective there minus lambda log V, V the volume of the connectors' simplex {c_1, ..., c_m} (Cayley-Menger, from
the connectors' Gram matrix). Connectors start at the centroid of the vertices so far. Evaluation, with BatchNorm
recomputed at every point and eval_curve.py's estimators and subsets: --points uniform random points of each
simplex and of the plain simplex of the endpoints alone, every barycentre, and every path endpoint_i -> c ->
endpoint_j. Writes the complex checkpoint, a JSON, the triangles as barycentric heat maps (m = 2), the paths
like Figure 2, and reconstructions of fixed test images.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import ae
import curves
import data
from lib import cli, complexes, training
from lib.training import (EVAL_SUBSETS, METRICS, add_subset_args, anchor_values, check_compatible, control_variate_mean,
                          convergence, evaluate_path, mean_and_se, recompute_bn, target_features)
from lib.files import (COMPLEX_FORMAT, EVAL_FORMAT, RESUME_FORMAT, SIMPLEX_FORMAT, UserError, ensure_dir, file_sha256,
                       load_ae, load_checkpoint, read_result, save_checkpoint, save_figure, write_json)

ORDERS = ("together", "sequential")
VOLUME_REG = 1e-3  # the default lambda with two or more connectors (docs/experiments.md, simplexes, measures others)
VOLUME_EPS = 1e-12  # log(V^2 + eps): finite when the connectors coincide (they start at one point)
POINTS_SEED = 2021  # the evaluated random points: the same for every complex of the same shape
SIMPLEX_DIR = Path("runs/simplex")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument("--ckpts", nargs="+", required=True, metavar="CKPT",
                   help="the endpoints (train_ae.py checkpoints of one loss group and architecture), at least 2; the study's three")
    p.add_argument("--connectors", type=cli.positive_int, default=2, help="trainable vertices m shared by every simplex")
    p.add_argument("--volume-reg", type=cli.nonnegative_float, default=None, metavar="LAMBDA",
                   help=f"weight of -log V of the connectors' simplex (needs m >= 2; default {VOLUME_REG:g} with m >= 2, 0 with "
                        f"m = 1). Applied as given, per step, beside the group's loss; the reference code instead divides its "
                        f"lambda by log(V^2 + 1e-4) of a randomly initialised simplex and takes the log of V^2 + 1e-4")
    p.add_argument("--order", default="together", choices=ORDERS,
                   help="together: all connectors train for all --epochs; sequential (as the reference code): connector j "
                        "trains alone for its share of the epochs, the earlier ones frozen, starting at the centroid of all "
                        "vertices before it")
    p.add_argument("--epochs", type=cli.positive_int, default=20, help="passes over the training images (all connectors together)")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam learning rate of the connectors (the schedule's base rate)")
    training.add_schedule_arg(p)
    p.add_argument("--wd", type=cli.nonnegative_float, default=0.0, help="L2 weight decay on the connectors")
    p.add_argument("--batch-size", type=cli.positive_int, default=128, help="images per optimiser step (one point per batch)")
    p.add_argument("--seed", type=int, default=0, help="fixes the data order and the simplex and point drawn per batch")
    data.add_data_args(p, inherit=True)
    p.add_argument("--vgg-weights", default=None, help="perceptual group only: the VGG16 weight file, when the endpoints used one")
    training.add_precision_arg(p)
    add_subset_args(p, "each evaluated point", EVAL_SUBSETS)
    p.add_argument("--quality-images", type=cli.positive_int, default=250,
                   help="test images (the first of --test-images) whose reconstructions' PSNR and SSIM are measured at each point")
    p.add_argument("--points", type=cli.nonnegative_int, default=24,
                   help=f"uniform random points evaluated in each simplex, then in the plain simplex of the endpoints (one stream, "
                        f"seed {POINTS_SEED}: the same points for every complex of the same shape)")
    p.add_argument("--num-points", type=cli.at_least_two, default=11, help="evenly spaced t along each path endpoint_i -> c -> endpoint_j")
    p.add_argument("--grid", type=cli.nonnegative_int, default=8,
                   help="triangles only (m = 2, three endpoints): subdivisions of the barycentric grid of the heat maps (test "
                        "subset, plain means); 0: none")
    p.add_argument("--images", type=cli.positive_int, default=4, help="fixed test images reconstructed")
    p.add_argument("--curve-evals", nargs="*", default=[], metavar="JSON",
                   help="eval_curve.py JSONs of curves fitted between the same endpoints, drawn beside the paths with their segments")
    cli.add_device_arg(p)
    p.add_argument("--out", default=None, help=f"complex checkpoint (default: {SIMPLEX_DIR}/<group>-<endpoints>-m<m>.pt); "
                                                f"its JSON and figures go beside it (<out without .pt>.json, .triangles.png, ...)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit from its last completed epoch (a finished one is evaluated again)")
    return p.parse_args(argv)


def phases(order: str, epochs: int, n: int, m: int) -> list[tuple[int, int, list[int]]]:
    """(first epoch, end epoch, the connectors trained): one phase for all, or one per connector."""
    if order == "together":
        return [(0, epochs, list(range(n, n + m)))]
    return [(epochs * j // m, epochs * (j + 1) // m, [n + j]) for j in range(m)]


def phase_of(plan: list, epoch: int) -> int:
    return next(i for i, (start, stop, _) in enumerate(plan) if start <= epoch < stop)


def bend_parameters(net: curves.CurveNet, bends: list[int]) -> list[torch.nn.Parameter]:
    return [getattr(layer, f"{name}_{j}") for _, layer in net.layers for name in layer.param_names for j in bends]


def log_volume(net: curves.CurveNet, bends: list[int]) -> torch.Tensor:
    """log V of the simplex of `bends` (0.5 log(V^2 + eps)), differentiable."""
    return 0.5 * torch.log(complexes.simplex_volume_sq(net.gram(bends)).clamp_min(0) + VOLUME_EPS)


def volume(net: curves.CurveNet, bends: list[int]) -> float:
    with torch.no_grad():
        return float(complexes.simplex_volume_sq(net.gram(bends)).clamp_min(0).sqrt())


def fit(args, net, n, m, objective, train_images, test_images, bn_images, device, out, run_config) -> list[dict]:
    """Train the connectors (resumable after every epoch); returns the history."""
    plan = phases(args.order, args.epochs, n, m)
    if any(start == stop for start, stop, _ in plan):
        raise UserError(f"--order sequential needs at least one epoch per connector: --epochs {args.epochs} < --connectors {m}")
    resume_file = training.resume_path(out)
    precision = run_config["precision"]
    per_epoch = training.steps_per_epoch(len(train_images), args.batch_size)
    start, history = 0, []
    if args.resume and resume_file.exists():
        start = int(load_checkpoint(resume_file, RESUME_FORMAT, ("epoch",))["epoch"]) + 1
    optimizer = new_phase(net, plan[phase_of(plan, min(start, args.epochs - 1))], args, init=False)  # build() placed them
    if args.resume and resume_file.exists():
        start, history = training.load_resume(resume_file, net, optimizer, run_config)
        print(f"resuming {out} after epoch {start}")
    lam = run_config["volume_reg"]

    def middle_test_loss(active: list[list[int]]) -> float:  # the mean test loss at the barycentres of the simplexes
        losses = []
        for simplex in active:
            point = complexes.barycentre(simplex, net.num_bends)
            recompute_bn(net, bn_images, objective.noise, batch_size=args.eval_batch_size, device=device, t=point)
            losses.append(training.evaluate(net, test_images, objective, batch_size=args.eval_batch_size, device=device, t=point)["loss"])
        return float(np.mean(losses))

    targets = training.target_feature_cache(objective, train_images, batch_size=args.eval_batch_size, device=device, precision=precision)
    group = ae.group_of(run_config)
    for epoch in range(start, args.epochs):
        p = phase_of(plan, epoch)
        first, stop, trained = plan[p]
        connectors = list(range(n, trained[-1] + 1))  # those in the simplexes now
        active = complexes.simplexes(n, len(connectors))
        if epoch == 0:
            history.append({"epoch": 0, "train_loss": None, "test_loss_t05": middle_test_loss(active), "seconds": 0.0})
            print(f"epoch 0 (connectors at the centroid): test {group} at the barycentres {history[0]['test_loss_t05']:.5f}")

        def t_of(i: int, u: float, active=active) -> list[float]:  # from the epoch generator's u: a resumed fit draws as one run
            return complexes.sample_point(active, net.num_bends, torch.Generator().manual_seed(int(u * 2**53)))[1]

        penalty = (lambda model, connectors=connectors: -lam * log_volume(net, connectors).float()) if lam and len(connectors) > 1 else None
        step = training.Step(objective, optimizer, device, args.batch_size, precision, t_of=t_of, target_features=targets,
                             penalty=penalty, lr_at=lambda s, first=first, stop=stop: training.schedule_rates(
                                 args.schedule, args.lr, per_epoch * (stop - first))(s - first * per_epoch))
        t0 = time.time()
        train_loss = training.train_epoch(net, train_images, step, generator=training.epoch_generator(args.seed, epoch),
                                          epoch=epoch, desc="complex")
        mid = middle_test_loss(active)
        vol = volume(net, connectors) if len(connectors) > 1 else 0.0
        history.append({"epoch": epoch + 1, "lr": step.lr_at((epoch + 1) * per_epoch - 1), "train_loss": train_loss,
                        "test_loss_t05": mid, "connectors_volume": vol, "seconds": time.time() - t0})
        print(f"epoch {epoch + 1}/{args.epochs}: train E {group} {train_loss:.5f}  test {group} at the barycentres {mid:.5f}  "
              f"V(connectors) {vol:.4g}  ({time.time() - t0:.1f}s)", flush=True)
        if epoch + 1 < args.epochs and phase_of(plan, epoch + 1) != p:  # the next connector starts before the state is saved
            optimizer = new_phase(net, plan[p + 1], args, init=True)
        training.save_resume(resume_file, net, optimizer, epoch, history, run_config)
    return history


def new_phase(net, phase, args, init: bool) -> torch.optim.Optimizer:
    """The optimiser of a phase's connectors; with `init`, those connectors start at the centroid of the vertices before them."""
    if init:
        for j in phase[2]:
            complexes.init_connector(net, j)
    return torch.optim.Adam(bend_parameters(net, phase[2]), lr=args.lr, weight_decay=args.wd)


QUALITY_METRICS = tuple(f"test_{name}" for name in training.Quality().names())  # what training.Quality measures (no LPIPS here)


def estimate(values: dict, controls: list[dict] | None) -> dict:
    """Mean +- SE of each metric at a point: the subset's mean corrected by the vertices' per-image values on the whole
    split (control_variate_mean), or the subset's plain mean without controls."""
    out = {}
    for name in (*METRICS, *QUALITY_METRICS):
        if controls:
            fit_ = control_variate_mean(values[name], np.stack([c[name] for c in controls], axis=1))
            out[name], out[f"{name}_se"] = fit_["estimate"], fit_["se"]
        else:
            out[name], out[f"{name}_se"] = mean_and_se(torch.from_numpy(values[name]))
    return out


def grid_weights(subdivisions: int) -> list[list[float]]:
    """The barycentric grid of a triangle: (i, j, k) / s with i + j + k = s."""
    s = subdivisions
    return [[i / s, j / s, (s - i - j) / s] for i in range(s + 1) for j in range(s + 1 - i)]


def spread(values: list[float], ses: list[float], worse: float, worse_se: float) -> dict:
    """The maximum and the 95th percentile of point estimates against the worse endpoint: the max's SE is its point's,
    the percentile's a bootstrap over the points; ratios by the delta method (ignoring the positive correlation of the
    point with the endpoint, which would make them smaller)."""
    v = np.asarray(values)
    k = int(v.argmax())
    rng = np.random.default_rng(0)
    boot = [np.percentile(rng.choice(v, len(v)), 95) for _ in range(1000)] if len(v) > 1 else [v[0]]
    p95, p95_se = float(np.percentile(v, 95)), float(np.std(boot))
    ratio = lambda x, se: {"ratio": x / worse, "ratio_se": x / worse * float(np.hypot(se / x, worse_se / worse))}  # noqa: E731
    return {"points": len(v), "max": float(v[k]), "max_se": float(ses[k]), "max_vs_worse": ratio(float(v[k]), float(ses[k])),
            "p95": p95, "p95_se": p95_se, "p95_vs_worse": ratio(p95, p95_se), "mean": float(v.mean())}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    paths_in = [Path(c) for c in args.ckpts]
    if len(paths_in) < 2:
        raise UserError(f"--ckpts needs at least 2 endpoints, got {len(paths_in)}; pass the loss group's checkpoints")
    if len({p.resolve() for p in paths_in}) < len(paths_in):
        raise UserError("--ckpts names the same file twice; a complex needs distinct endpoints")
    loaded = [load_ae(p) for p in paths_in]
    models, configs = [m for m, _ in loaded], [c["config"] for _, c in loaded]
    for c in configs[1:]:
        check_compatible(configs[0], c)
    n, m = len(models), args.connectors
    lam = (VOLUME_REG if m > 1 else 0.0) if args.volume_reg is None else args.volume_reg
    if lam and m < 2:
        raise UserError(f"--volume-reg {lam:g} needs --connectors >= 2 (one connector has no volume); pass --volume-reg 0")
    group = ae.group_of(configs[0])
    out = Path(args.out) if args.out else SIMPLEX_DIR / f"{group}-{'-'.join(p.stem for p in paths_in)}-m{m}.pt"
    stem = out.with_name(out.stem)  # the JSON and figures: <stem>.json, <stem>.paths.png, ... (a group name may hold dots)
    ensure_dir(out.parent)
    data_cfg = data.data_config(args, base=configs[0].get("data"))
    curve_evals = [read_result(e, (EVAL_FORMAT,)) for e in args.curve_evals]
    train_images, test_images = data.load_split(data_cfg, "train"), data.load_split(data_cfg, "test")
    bn_images = train_images[: args.bn_images]
    cli.seed_everything(args.seed)
    objective = training.objective_from_config(configs[0], args.vgg_weights, device)
    precision = training.resolve_precision(args.precision, device, configs[0]["loss"], args.resume and training.resume_path(out))
    endpoints = [{"path": str(p), "sha256": file_sha256(p), "config": c} for p, c in zip(paths_in, configs)]
    run_config = {"connectors": m, "simplexes": complexes.simplexes(n, m), "model": configs[0]["model"], "loss": configs[0]["loss"],
                  **ae.variant_settings(configs[0]), "vgg_weights": configs[0].get("vgg_weights"),
                  "vgg_layers": configs[0].get("vgg_layers"), "data": data_cfg, "endpoints": endpoints, "volume_reg": lam,
                  "order": args.order, "lr": args.lr, "schedule": args.schedule, "epochs": args.epochs, "wd": args.wd,
                  "batch_size": args.batch_size, "seed": args.seed, "precision": precision}
    net = complexes.build(models, m).to(device, memory_format=torch.channels_last)
    t0 = time.time()
    if args.resume and out.exists() and not training.resume_path(out).exists():
        net, ckpt = complexes.load(out)
        net = net.to(device, memory_format=torch.channels_last)
        history, run_config = ckpt.get("history", []), ckpt["config"]  # the fit as it was made, whatever the flags say now
        print(f"{out} is already complete; evaluating it")
    else:
        print(f"fitting a complex of {n} endpoints and {m} connector(s) ({group} loss, lambda {lam:g}, {args.order}, "
              f"{len(train_images)} train images, device {device}, precision {precision})")
        history = fit(args, net, n, m, objective, train_images, test_images, bn_images, device, out, run_config)
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_checkpoint(out, COMPLEX_FORMAT, {"state_dict": state, "config": run_config, "history": training.without_timing(history)})
        training.resume_path(out).unlink(missing_ok=True)
        print(f"wrote {out}")
    fit_seconds = time.time() - t0
    result = evaluate(args, net, n, m, objective, train_images, test_images, bn_images, device, run_config, curve_evals, stem)
    result.update({"format": SIMPLEX_FORMAT, "complex_ckpt": str(out), "complex_sha256": file_sha256(out), "fit_seconds": fit_seconds,
                   "fit": {"history": training.without_timing(history), **convergence(history)} if len(history) > 1 else None})
    write_json(out.with_name(out.stem + ".json"), result)  # last: its presence means the evaluation and its figures are complete
    print_summary(result)
    print(f"wrote {out.with_name(out.stem + '.json')}, {', '.join(result['files'].values())}")
    return result


def evaluate(args, net, n, m, objective, train_images, test_images, bn_images, device, run_config, curve_evals, stem) -> dict:
    k = net.num_bends
    split_images = {"train": train_images[: args.train_images], "test": test_images[: args.test_images]}
    population = {"train": train_images, "test": test_images}
    shown = test_images[: args.images].to(device).float().div(255).contiguous(memory_format=torch.channels_last)
    common = dict(bn_images=bn_images, batch_size=args.eval_batch_size, device=device)
    quality = training.Quality(args.quality_images)
    names = [f"e{i}" for i in range(n)] + [f"c{j + 1}" for j in range(m)]
    vertex_point = lambda v: complexes.simplex_point([v], [1.0], k)  # noqa: E731

    # every path endpoint_i -> c -> endpoint_j, as a 3-bend PolyChain (the same network at every point, tested)
    states = [net.state_dict_at(vertex_point(v)) for v in range(k)]
    paths, path_vertices = {}, {}
    for (i, j), c in itertools.product(itertools.combinations(range(n), 2), range(n, k)):
        chain = curves.CurveNet(net.template, "polychain", 3)
        for b, v in enumerate((i, c, j)):
            chain.import_endpoint(states[v], b, buffers=b == 0)
        name = f"{names[i]}-{names[c]}-{names[j]}"
        paths[name], path_vertices[name] = chain.to(device, memory_format=torch.channels_last), (i, c, j)
    del states
    anchors = anchor_values(paths, [0.0, 0.5, 1.0], population, objective, quality=quality, **common)
    vertex_values = {}  # each vertex's per-image values on every image, from the paths' anchors (each evaluated once)
    for name, (i, c, j) in path_vertices.items():
        vertex_values.update({i: anchors[name][0.0], c: anchors[name][0.5], j: anchors[name][1.0]})
    features = target_features(objective, split_images, args.eval_batch_size, device)

    def at(point, vertices):
        values = training.evaluate_point(net, split_images, objective, t=point, features=features, quality=quality, **common)
        return estimate({n_: v.double().numpy() for n_, v in values.items()}, [vertex_values[v] for v in vertices])

    vertices = [{"name": names[v], "kind": "endpoint" if v < n else "connector",
                 **{name: float(vertex_values[v][name].mean()) for name in (*METRICS, *QUALITY_METRICS)},
                 **{f"{name}_se": float(vertex_values[v][name].std(ddof=1) / np.sqrt(len(vertex_values[v][name])))
                    for name in (*METRICS, *QUALITY_METRICS)}}
                for v in range(k)]
    simplex_list = run_config["simplexes"]
    plain = list(range(n))
    generator = torch.Generator().manual_seed(POINTS_SEED)
    samples = {"complex": [], "plain": []}
    with tqdm(total=args.points * (len(simplex_list) + 1), desc="random points", leave=False, disable=None) as bar:
        for s, simplex in enumerate(simplex_list + [plain]):
            for _ in range(args.points):
                weights = complexes.uniform_simplex(len(simplex), generator)
                entry = {"simplex": s if s < len(simplex_list) else None, "vertices": [names[v] for v in simplex], "weights": weights,
                         **at(complexes.simplex_point(simplex, weights, k), simplex)}
                samples["complex" if s < len(simplex_list) else "plain"].append(entry)
                bar.update()
    barycentres = {"+".join(names[v] for v in simplex): {"vertices": [names[v] for v in simplex],
                                                          **at(complexes.barycentre(simplex, k), simplex)}
                   for simplex in simplex_list + [plain]}

    columns_t = np.linspace(0, 1, args.num_points)
    ts = columns_t.tolist()
    columns = sorted({int(round(i * (args.num_points - 1) / 4)) for i in range(5)})
    path_results, path_recon = {}, {}
    for name, chain in paths.items():
        path_results[name], path_recon[name] = evaluate_path(chain, ts, split_images, objective, shown=shown, columns=columns,
                                                             desc=f"path {name}", features=features, anchors=anchors[name],
                                                             quality=quality, **common)

    grid = None
    if args.grid and m == 2 and n == 3:
        weights = grid_weights(args.grid)
        grid = {"subdivisions": args.grid, "weights": weights, "triangles": {}}
        test_only = {"test": split_images["test"]}
        for simplex in simplex_list + [plain]:
            losses = []
            for w in tqdm(weights, desc=f"grid {'+'.join(names[v] for v in simplex)}", leave=False, disable=None):
                values = training.evaluate_point(net, test_only, objective, t=complexes.simplex_point(simplex, w, k),
                                                 features={"test": features.get("test")}, **common)
                losses.append(float(values["test_loss"].double().mean()))
            grid["triangles"]["+".join(names[v] for v in simplex)] = {"vertices": [names[v] for v in simplex], "test_loss": losses}

    worse = max(range(n), key=lambda v: vertices[v]["test_loss"])
    summary = {"worse_endpoint": names[worse], "worse_test_loss": vertices[worse]["test_loss"]}
    for key, entries in samples.items():
        if entries:
            summary[key] = {name: spread([e[name] for e in entries], [e[f"{name}_se"] for e in entries], vertices[worse][name],
                                         vertices[worse][f"{name}_se"]) for name in ("test_loss", "test_mse")}
            low = min(entries, key=lambda e: e["test_ssim"])  # image quality: the worst point's SSIM against the endpoints'
            summary[key]["test_ssim"] = {"min": low["test_ssim"], "min_se": low["test_ssim_se"],
                                         "endpoints": [vertices[v]["test_ssim"] for v in range(n)]}
    summary["paths"] = {name: {"max": r["summary"]["test_loss"]["max"], "barrier_rel": r["summary"]["test_loss"]["barrier_rel"]}
                        for name, r in path_results.items()}
    summary["volumes"] = {"connectors": volume(net, list(range(n, k))) if m > 1 else 0.0,
                          **{"+".join(names[v] for v in s): volume(net, s) for s in simplex_list + [plain]}}
    result = {"group": ae.group_of(run_config), "loss": run_config["loss"], **ae.variant_settings(run_config), "model": run_config["model"],
              "data": run_config["data"], "endpoints": [e["path"] for e in run_config["endpoints"]],
              "endpoint_seeds": [e["config"].get("seed") for e in run_config["endpoints"]], "connectors": m,
              "volume_reg": run_config["volume_reg"], "order": run_config["order"], "epochs": run_config["epochs"],
              "simplexes": [[names[v] for v in s] for s in simplex_list],
              "settings": {"points": args.points, "points_seed": POINTS_SEED, "num_points": args.num_points, "grid": args.grid,
                           "bn_images": len(bn_images), "train_images": len(split_images["train"]),
                           "test_images": len(split_images["test"]), "estimator": "control-variates (the vertices as controls)",
                           "quality_images": min(args.quality_images, len(split_images["test"])),
                           "population": {"train": len(train_images), "test": len(test_images)}},
              "vertices": vertices, "points": samples, "barycentres": barycentres, "t": ts, "paths": path_results,
              "grid": grid, "summary": summary}
    result["files"] = figures(result, net, shown, path_recon, columns, curve_evals, stem, bn_images, objective, device, args)
    return result


def print_summary(result: dict) -> None:
    s = result["summary"]
    print(f"\ncomplex of {len(result['endpoints'])} endpoints, {result['connectors']} connector(s), {result['group']} loss; "
          f"worse endpoint {s['worse_endpoint']}: test loss {s['worse_test_loss']:.5f}")
    for key in ("complex", "plain"):
        if key in s:
            t = s[key]["test_loss"]
            print(f"  {key:8} {t['points']:3d} random points: max {t['max']:.5f} ({t['max_vs_worse']['ratio']:.2f}x the worse "
                  f"endpoint +- {t['max_vs_worse']['ratio_se']:.2f}), 95th percentile {t['p95']:.5f} "
                  f"({t['p95_vs_worse']['ratio']:.2f}x +- {t['p95_vs_worse']['ratio_se']:.2f}); lowest SSIM {s[key]['test_ssim']['min']:.3f} "
                  f"+- {s[key]['test_ssim']['min_se']:.3f} (endpoints {', '.join(f'{v:.3f}' for v in s[key]['test_ssim']['endpoints'])})")
    for name, b in result["barycentres"].items():
        print(f"  barycentre {name:12} test loss {b['test_loss']:.5f} +- {b['test_loss_se']:.5f}")
    for name, p in s["paths"].items():
        print(f"  path {name:10} max test loss {p['max']:.5f} (barrier {100 * p['barrier_rel']:.1f}% of the worse end)")
    print("  volumes: " + ", ".join(f"{k} {v:.4g}" for k, v in s["volumes"].items()))


def figures(result, net, shown, path_recon, columns, curve_evals, stem, bn_images, objective, device, args) -> dict:
    """The triangles' heat maps (with a grid), the paths like Figure 2, and the reconstruction strip; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.tri import Triangulation

    files = {}
    if result["grid"]:
        w = np.asarray(result["grid"]["weights"])
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
        xy = w @ corners
        tri = Triangulation(xy[:, 0], xy[:, 1])
        triangles = result["grid"]["triangles"]
        values = np.concatenate([t["test_loss"] for t in triangles.values()])
        norm = LogNorm(vmin=values.min(), vmax=values.max())
        fig, axes = plt.subplots(1, len(triangles), figsize=(3.6 * len(triangles), 3.6), squeeze=False)
        for ax, (name, t) in zip(axes[0], triangles.items()):
            mesh = ax.tripcolor(tri, np.asarray(t["test_loss"]), shading="gouraud", norm=norm, cmap="viridis")
            for corner, label in zip(corners, t["vertices"]):
                ax.annotate(label, corner, ha="center", va="top" if corner[1] == 0 else "bottom", fontsize=10)
            ax.set_title(("plain triangle " if "c" not in name else "") + name, fontsize=10)
            ax.set_aspect("equal")
            ax.axis("off")
        fig.colorbar(mesh, ax=axes[0].tolist(), shrink=0.8, label=f"test {result['group']} loss")
        files["triangles"] = save_figure(fig, stem.with_name(stem.name + ".triangles.png"), dpi=120, bbox_inches="tight").name

    pairs = sorted({(name.split("-")[0], name.split("-")[2]) for name in result["paths"]})
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False)
    seeds = dict(zip([f"e{i}" for i in range(len(result["endpoints"]))], result["endpoints"]))
    for ax, (a, b) in zip(axes[0], pairs):
        for name, r in result["paths"].items():
            if name.startswith(f"{a}-") and name.endswith(f"-{b}"):
                ax.plot(result["t"], r["test_loss"], "-o", ms=3, label=f"through {name.split('-')[1]}")
        for ev in curve_evals:
            ends = [str(Path(p).resolve()) for p in ev["endpoints"]]
            want = [str(Path(seeds[a]).resolve()), str(Path(seeds[b]).resolve())]
            if sorted(ends) == sorted(want):
                flip = ends != want
                for key, style in (("curve", "-"), ("segment", "--")):
                    if key in ev["paths"]:
                        t = np.asarray(ev["t"])
                        ax.plot(1 - t if flip else t, ev["paths"][key]["test_loss"], style, color="grey" if key == "segment" else "k",
                                lw=1, label=f"{ev['curve']} curve" if key == "curve" else "segment")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(f"{Path(seeds[a]).stem} to {Path(seeds[b]).stem}", fontsize=10)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"test {result['group']} loss")
    files["paths"] = save_figure(fig, stem.with_name(stem.name + ".paths.png"), dpi=120, bbox_inches="tight").name

    # reconstructions: the vertices, each simplex's barycentre, and the path e0 -> c1 -> e1
    k, cols, labels = net.num_bends, [], []
    names = [v["name"] for v in result["vertices"]]
    points = [(name, complexes.simplex_point([i], [1.0], k)) for i, name in enumerate(names)]
    points += [(f"bary {name}", complexes.barycentre([names.index(x) for x in b["vertices"]], k)) for name, b in result["barycentres"].items()]
    for label, point in points:
        recompute_bn(net, bn_images, objective.noise, batch_size=args.eval_batch_size, device=device, t=point)
        net.eval()
        with torch.no_grad():
            cols.append(net(shown, t=point).float().cpu())
        labels.append(label)
    first = next(iter(path_recon))
    for i, c in enumerate(columns):
        cols.append(path_recon[first][i])
        labels.append(f"{first} t={result['t'][c]:.2f}")
    fig, axes = plt.subplots(len(shown), len(cols) + 1, figsize=(1.1 * (len(cols) + 1), 1.2 * len(shown)), squeeze=False)
    for r in range(len(shown)):
        for c, image in enumerate([shown.cpu()] + cols):
            axes[r][c].imshow(image[r].clamp(0, 1).permute(1, 2, 0).numpy())
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title("original" if c == 0 else labels[c - 1], fontsize=6)
    files["recon"] = save_figure(fig, stem.with_name(stem.name + ".recon.png"), dpi=120, bbox_inches="tight").name
    return files


if __name__ == "__main__":
    cli.run(main)
