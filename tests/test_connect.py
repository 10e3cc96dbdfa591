"""Tests of connecting endpoints: fit_curve.py, eval_curve.py and plot.py."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ae
import curves
import data
import ensemble
import eval_curve
import fit_curve
import plot
from lib import training
from lib import probe
import train_ae
from conftest import killed_after_epoch, tiny_args
from lib.files import UserError, load_ae, load_checkpoint, save_checkpoint, load_curve

HERE = Path(__file__).resolve().parent.parent  # the repository root, where the scripts are
EVAL_FLAGS = ["--num_points", "5", "--columns", "3", "--bn-images", "40", "--train-images", "40", "--test-images", "12"]


@pytest.fixture(scope="module")
def fitted(endpoints, tmp_path_factory):
    """A Bezier curve fitted for 3 epochs between the two endpoints, and its evaluation."""
    tmp = tmp_path_factory.mktemp("curve")
    out = tmp / "curve.pt"
    fit_curve.main(["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--curve", "bezier", "--epochs", "3",
                    "--lr", "3e-3", "--batch-size", "16", "--bn-images", "40", "--out", str(out)])
    result = eval_curve.main(["--ckpt", str(out), *EVAL_FLAGS])
    return out, result


def test_fit_writes_a_curve_checkpoint_with_its_endpoints(fitted, endpoints):
    out, _ = fitted
    net, ckpt = load_curve(out)
    assert ckpt["config"]["curve"] == "bezier" and ckpt["config"]["num_bends"] == 3
    assert [e["path"] for e in ckpt["config"]["endpoints"]] == [str(p) for p in endpoints]
    a, b = load_ae(endpoints[0])[0], load_ae(endpoints[1])[0]
    flat = lambda m: torch.cat([p.reshape(-1) for p in m.parameters()])  # noqa: E731
    assert torch.equal(net.weights(0.0), flat(a)) and torch.equal(net.weights(1.0), flat(b))
    assert len(ckpt["history"]) == 4  # the linear initialisation, then 3 epochs


def test_evaluation_has_every_point_for_both_paths(fitted):
    _, result = fitted
    assert result["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for path in ("curve", "segment"):
        for name in ("train_loss", "test_loss", "train_mse", "test_mse", "train_loss_se", "dl"):
            assert len(result["paths"][path][name]) == 5, (path, name)
        assert result["paths"][path]["dl"][0] == 0 and all(d > 0 for d in result["paths"][path]["dl"][1:])


def test_segment_ends_are_the_endpoints_own_losses_on_every_image(fitted, endpoints):
    # the default estimator evaluates the ends (anchors) on every image of both splits
    out, result = fitted
    config = load_curve(out)[1]["config"]
    train_images = data.load_split(config["data"], "train")
    test_images = data.load_split(config["data"], "test")
    assert result["settings"]["population"] == {"train": len(train_images), "test": len(test_images)}
    assert len(train_images) > 40  # the train subset is smaller than its split (the test subset is the whole split)
    for index, t in ((0, 0.0), (1, 1.0)):
        model = load_ae(endpoints[index])[0]
        curves.update_bn(model, data.batches(train_images[:40], 500))
        for split, images in (("train", train_images), ("test", test_images)):
            own = training.evaluate(model, images, ae.mse, batch_size=500, device=torch.device("cpu"))
            position = result["t"].index(t)
            for path in ("segment", "curve"):
                assert result["paths"][path][f"{split}_loss"][position] == pytest.approx(own["loss"], rel=1e-5)
                assert result["paths"][path][f"{split}_loss_se_subset"][position] == 0


def test_control_variate_points_land_within_their_error_of_the_whole_split(fitted):
    out, result = fitted
    net, ckpt = load_curve(out)
    train_images = data.load_split(ckpt["config"]["data"], "train")
    test_images = data.load_split(ckpt["config"]["data"], "test")
    assert result["settings"]["estimator"] == "control-variates" and result["settings"]["anchors"] == [0.0, 0.5, 1.0]
    path = result["paths"]["curve"]
    assert path["estimator"] == ["anchor", "control-variates", "anchor", "control-variates", "anchor"]
    for position in (1, 3):
        t = result["t"][position]
        curves.update_bn(net, data.batches(train_images[:40], 500), t=t)
        exact = {split: training.evaluate(net, images, ae.mse, batch_size=500, device=torch.device("cpu"), t=t)["loss"]
                 for split, images in (("train", train_images), ("test", test_images))}
        subset = training.evaluate(net, train_images[:40], ae.mse, batch_size=500, device=torch.device("cpu"), t=t)["loss"]
        own = path["train_loss_se_subset"][position]
        assert 0 < own < path["train_loss_se"][position]
        assert abs(path["train_loss"][position] - exact["train"]) < 4 * own, t
        # the correction is the point: closer to the whole split than the subset's plain mean
        assert abs(path["train_loss"][position] - exact["train"]) < abs(subset - exact["train"]), t
        # the test subset is the whole test split: its mean, exactly, and no error of its own
        assert path["test_loss"][position] == pytest.approx(exact["test"], rel=1e-5) and path["test_loss_se_subset"][position] == 0


def test_subset_estimator_gives_the_subsets_plain_means(fitted, tmp_path):
    out, _ = fitted
    result = eval_curve.main(["--ckpt", str(out), *EVAL_FLAGS, "--estimator", "subset", "--out", str(tmp_path / "e.json")])
    net, ckpt = load_curve(out)
    train_images = data.load_split(ckpt["config"]["data"], "train")
    assert result["settings"]["estimator"] == "subset" and result["settings"]["anchors"] == []
    assert result["paths"]["segment"]["estimator"] == ["subset"] * 5 and "train_loss_se_subset" not in result["paths"]["segment"]
    curves.update_bn(net, data.batches(train_images[:40], 500), t=0.25)
    own = training.evaluate(net, train_images[:40], ae.mse, batch_size=500, device=torch.device("cpu"), t=0.25)
    assert result["paths"]["curve"]["train_loss"][1] == pytest.approx(own["loss"], rel=1e-5)
    assert result["paths"]["curve"]["train_loss_se"][1] == pytest.approx(own["loss_se"], rel=1e-5)


def test_fitted_curve_beats_its_linear_initialisation(fitted):
    # a linearly initialised Bezier curve is the segment, so the segment is the curve before fitting
    _, result = fitted
    curve, segment = result["paths"]["curve"]["summary"], result["paths"]["segment"]["summary"]
    assert curve["train_loss"]["mean"] < segment["train_loss"]["mean"]


def test_barrier_summary_is_consistent(fitted):
    _, result = fitted
    for path in ("curve", "segment"):
        values, s = result["paths"][path]["test_loss"], result["paths"][path]["summary"]["test_loss"]
        assert s["max"] == max(values) and s["start"] == values[0] and s["end"] == values[-1]
        assert s["barrier"] >= 0 and s["barrier_rel"] == pytest.approx(s["barrier"] / ((values[0] + values[-1]) / 2))


def test_evaluation_carries_the_fit_history_and_its_check(fitted):
    out, result = fitted
    history = load_curve(out)[1]["history"]
    fit = result["fit"]
    assert fit["history"] == history and fit["epochs"] == 3 and fit["schedule"] == "ref" and fit["last_quarter_epochs"] == 1
    assert fit["last_quarter_drop"] == pytest.approx(1 - history[3]["test_loss_t05"] / history[2]["test_loss_t05"])
    for path in ("curve", "segment"):
        s = result["paths"][path]["summary"]["test_loss"]
        # at an end the excess over the line is zero for every image, so is its standard error
        assert (s["barrier_se"] > 0) == (0 < s["t_barrier"] < 1) and s["excess_se"] >= 0 and "below_ends" in s


def test_summary_barrier_of_a_known_profile():
    s = training.summarize([1.0, 3.0, 2.0], [0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    assert s["barrier"] == pytest.approx(1.5) and s["t_barrier"] == 0.5  # 3 - (1 + 2) / 2
    assert s["barrier_rel"] == pytest.approx(1.0) and s["integral"] == pytest.approx(2.25)


def test_grids_and_plots_are_pngs_of_the_expected_size(fitted, tmp_path):
    out, result = fitted
    eval_json = out.with_name("curve.eval.json")
    for name in ("curve_png", "segment_png"):
        with Image.open(eval_json.with_name(result["files"][name])) as png:
            assert png.format == "PNG" and png.size == (3 * 66 + 2, 4 * 66 + 2)  # 3 values of t, 4 images
    written = plot.main([str(eval_json), "--out", str(tmp_path / "fig")])
    names = sorted(p.name for p in written)
    assert names == ["fig2_mse_bezier.png", "fit_curve.png", "pair_curve.png", "recon_curve.gif", "strip_curve.png"]
    for path in (p for p in written if p.suffix == ".png"):
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size[0] > 400 and png.size[1] > 200
    assert [p.suffix for p in plot.main([str(eval_json), "--out", str(tmp_path / "pdf"), "--format", "pdf"])] == [".pdf"] * 4 + [".gif"]


def test_reconstructions_at_the_anchors_are_the_endpoints_own(fitted, endpoints):
    # t = 0, 0.5, 1 are the grid's columns and the estimator's anchors, whose losses are not recomputed per t:
    # their reconstructions must still come from BatchNorm statistics recomputed at that t
    out, result = fitted
    recon = np.load(out.with_name("curve.eval.npz"))
    assert result["columns_t"] == [0.0, 0.5, 1.0]
    train_images = data.load_split(load_curve(out)[1]["config"]["data"], "train")
    shown = torch.from_numpy(recon["originals"]).float() / 255
    for column, index in ((0, 0), (2, 1)):
        model = load_ae(endpoints[index])[0]
        curves.update_bn(model, data.batches(train_images[:40], 500))
        model.eval()
        with torch.no_grad():
            own = (model(shown).clamp(0, 1) * 255).round()
        for path in ("curve", "segment"):
            assert (torch.from_numpy(recon[path][recon["columns"][column]]).float() - own).abs().max() <= 1, (path, column)


def test_mismatched_endpoints_are_refused(endpoints, tmp_path):
    other = tmp_path / "wide.pt"
    train_ae.main(["--seed", "2", "--out", str(other), *tiny_args(tmp_path, **{"--width": 6})])
    with pytest.raises(UserError, match="different width"):
        fit_curve.main(["--a", str(endpoints[0]), "--b", str(other), "--out", str(tmp_path / "c.pt")])
    ckpt = load_checkpoint(endpoints[1], "aemc-ae-v1")
    ckpt["config"]["loss"] = "perceptual"
    relabelled = tmp_path / "perceptual.pt"
    save_checkpoint(relabelled, "aemc-ae-v1", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(UserError, match="different loss"):
        fit_curve.main(["--a", str(endpoints[0]), "--b", str(relabelled), "--out", str(tmp_path / "c.pt")])
    assert not (tmp_path / "c.pt").exists()


def test_cli_error_is_one_line_and_nonzero(endpoints, tmp_path):
    run = subprocess.run([sys.executable, str(HERE / "fit_curve.py"), "--a", str(endpoints[0]), "--b", str(tmp_path / "missing.pt")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "does not exist" in run.stderr
    assert not (tmp_path / "runs").exists()


def test_eval_refuses_a_curve_whose_endpoint_changed(fitted, endpoints, tmp_path):
    out, _ = fitted
    copy_a, copy_b = tmp_path / "a.pt", tmp_path / "b.pt"
    copy_a.write_bytes(endpoints[0].read_bytes()), copy_b.write_bytes(endpoints[1].read_bytes())
    curve = tmp_path / "c.pt"
    fit_curve.main(["--a", str(copy_a), "--b", str(copy_b), "--epochs", "1", "--batch-size", "32", "--bn-images", "16", "--out", str(curve)])
    save_checkpoint(copy_b, "aemc-ae-v1", {**{k: v for k, v in load_checkpoint(copy_b, "aemc-ae-v1").items() if k != "format"},
                                           "metrics": {"changed": True}})
    with pytest.raises(UserError, match="changed since"):
        eval_curve.main(["--ckpt", str(curve), *EVAL_FLAGS])
    assert not curve.with_name("c.eval.json").exists()


def test_each_objective_and_alignment_has_its_own_default_file(endpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder, runs/curves, is relative
    flags = ["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--epochs", "1", "--batch-size", "16", "--bn-images", "40"]
    fit_curve.main(flags)
    uniform = tmp_path / "runs/curves" / f"{endpoints[0].stem}-{endpoints[1].stem}-bezier.pt"
    before = uniform.read_bytes()
    fit_curve.main([*flags, "--objective", "arclength"])
    arclength = uniform.with_name(uniform.stem + "-arclength.pt")
    assert load_curve(arclength)[1]["config"]["objective"] == "arclength"
    assert uniform.read_bytes() == before  # the uniform fit is not overwritten
    assert fit_curve.default_out("x/a.pt", "b.pt", "polychain", aligned=True, objective="arclength").name == \
        "a-b-polychain-arclength-aligned.pt"


def test_arclength_fit_is_recorded_follows_its_sampler_and_resumes_exactly(endpoints, tmp_path, monkeypatch):
    flags = ["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--epochs", "2", "--lr", "3e-3", "--batch-size", "16",
             "--bn-images", "40"]
    arc = [*flags, "--objective", "arclength", "--arclength-every", "3"]
    drawn, real_sampler = [], curves.ArcLengthSampler.__call__

    def spy(self, u):
        drawn.append((u, real_sampler(self, u)))
        return drawn[-1][1]

    monkeypatch.setattr(curves.ArcLengthSampler, "__call__", spy)
    fit_curve.main([*arc, "--out", str(tmp_path / "whole.pt")])
    assert len(drawn) == 2 * 4 and any(abs(u - t) > 1e-4 for u, t in drawn)  # one t per step, not u itself once the curve bends
    _, ckpt = load_curve(tmp_path / "whole.pt")
    assert ckpt["config"]["objective"] == "arclength" and ckpt["config"]["arclength_every"] == 3
    fit_curve.main([*flags, "--out", str(tmp_path / "uniform.pt")])
    assert load_curve(tmp_path / "uniform.pt")[1]["config"]["objective"] == "uniform"
    middle = lambda path: torch.cat([v.reshape(-1) for k, v in load_curve(path)[0].state_dict().items() if k.endswith("_1")])  # noqa: E731
    assert not torch.equal(middle(tmp_path / "whole.pt"), middle(tmp_path / "uniform.pt"))

    with killed_after_epoch(monkeypatch, 0):
        fit_curve.main([*arc, "--out", str(tmp_path / "split.pt")])
    fit_curve.main([*arc, "--out", str(tmp_path / "split.pt"), "--resume"])
    assert (tmp_path / "whole.pt").read_bytes() == (tmp_path / "split.pt").read_bytes()


def test_probes_along_both_paths_share_their_ends_match_the_endpoint_and_are_drawn(fitted, endpoints, tmp_path, monkeypatch):
    out, _ = fitted
    flags = ["--ckpt", str(out), *EVAL_FLAGS, "--probe", "--probe-train-images", "48"]
    result = eval_curve.main([*flags, "--out", str(tmp_path / "p.eval.json")])
    probes = result["probe"]
    assert probes["t"] == [0.0, 0.5, 1.0] and set(probes["paths"]) == {"curve", "segment"}  # the 3 columns
    assert probes["train_images"] == 48 and probes["test_images"] == 12
    curve, segment = probes["paths"]["curve"], probes["paths"]["segment"]
    for i in (0, -1):  # t = 0 and 1 are the same two networks on both paths
        assert curve["accuracy"][i] == pytest.approx(segment["accuracy"][i]) and curve["r2"][i] == pytest.approx(segment["r2"][i])
    assert curve["cka_start"][0] == pytest.approx(1.0) and curve["cka_end"][-1] == pytest.approx(1.0)
    assert curve["cka_start"][-1] == pytest.approx(curve["cka_end"][0])  # CKA is symmetric
    # t = 0 is endpoint A: the same probe from its own codes, its BatchNorm recomputed on the same images
    model, ckpt = load_ae(endpoints[0])
    config = ckpt["config"]["data"]
    train, test = data.load_split(config, "train"), data.load_split(config, "test")
    curves.update_bn(model, data.batches(train[:40], 64))
    model.eval()
    with torch.no_grad():
        z = {"train": model.encode(train[:48].float() / 255), "test": model.encode(test[:12].float() / 255)}
    (train_labels, about), (test_labels, _) = probe.load_labels(config, "train"), probe.load_labels(config, "test")
    own = probe.probe(z["train"], {k: v[:48] for k, v in train_labels.items()}, z["test"], {k: v[:12] for k, v in test_labels.items()}, about)
    assert curve["accuracy"][0] == pytest.approx(own["accuracy"]) and curve["r2"][0] == pytest.approx(own["r2"], rel=1e-4, abs=1e-6)
    written = plot.main([str(tmp_path / "p.eval.json"), "--out", str(tmp_path / "fig")])
    assert tmp_path / "fig" / "probe_p.png" in written

    monkeypatch.setattr(probe, "load_labels", lambda config, split: None)  # a dataset without labels: a note, no probes
    monkeypatch.setattr(probe, "labels_unavailable", lambda config: "no labels here")
    assert eval_curve.main([*flags, "--out", str(tmp_path / "q.eval.json")])["probe"] == {"skipped": "no labels here"}


def test_sparse_denoising_curve_is_fitted_and_evaluated_with_its_objective(tmp_path, endpoints):
    ends = []
    for seed in (0, 1):
        ends.append(tmp_path / f"v{seed}.pt")
        train_ae.main(["--seed", str(seed), "--noise", "0.1", "--l1", "1e-3", "--out", str(ends[-1]), *tiny_args(tmp_path)])
    with pytest.raises(UserError, match=r"different input noise \(--noise\) \(0.1 vs 0.0\)"):
        fit_curve.main(["--a", str(ends[0]), "--b", str(endpoints[1]), "--out", str(tmp_path / "no.pt")])
    out = tmp_path / "curve.pt"
    fit_curve.main(["--a", str(ends[0]), "--b", str(ends[1]), "--epochs", "1", "--batch-size", "16", "--bn-images", "40", "--out", str(out)])
    assert load_curve(out)[1]["config"]["noise"] == 0.1 and load_curve(out)[1]["config"]["l1"] == 1e-3
    result = eval_curve.main(["--ckpt", str(out), *EVAL_FLAGS])
    assert result["group"] == "mse+noise=0.1+l1=0.001" and result["settings"]["near_zero"] == training.NEAR_ZERO
    for path in ("curve", "segment"):
        values = result["paths"][path]
        for split in ("train", "test"):
            assert len(values[f"{split}_code_abs"]) == len(values[f"{split}_code_zero"]) == 5
            assert all(a > 0 for a in values[f"{split}_code_abs"]) and all(0 <= z <= 1 for z in values[f"{split}_code_zero"])
    # the noise is fixed per image: the segment's ends are the curve's ends, value for value
    assert result["paths"]["curve"]["test_loss"][0] == result["paths"]["segment"]["test_loss"][0]
    assert result["paths"]["curve"]["test_loss"][0] > result["paths"]["curve"]["test_mse"][0]  # noisy inputs and L1 vs clean MSE
    with pytest.raises(UserError, match="not supported yet"):
        ensemble.main(["--ckpt", str(out), "--out", str(tmp_path / "ens")])


# ---------------------------------------------------------------- the control-variate estimator of eval_curve

def test_control_variate_mean_is_exact_when_the_controls_explain_everything():
    rng = np.random.default_rng(0)
    controls = rng.gamma(2.0, 1.0, size=(4000, 3))
    y = 0.3 + controls @ np.array([0.5, -0.2, 1.5])  # the quantity on all 4,000 images
    fit = training.control_variate_mean(y[:300], controls)
    assert fit["estimate"] == pytest.approx(y.mean(), rel=1e-10) and fit["r2"] == pytest.approx(1.0)
    assert fit["se_subset"] < 1e-9 * y.mean()
    full = training.control_variate_mean(y, controls)  # the subset is the whole split: its plain mean, no own error
    assert full["estimate"] == pytest.approx(y.mean(), rel=1e-12) and full["se_subset"] == 0


@pytest.mark.parametrize("n, big_n", [(200, 2000), (200, 400)])  # a tenth of the split, and half: (1 - n/N) matters there
def test_control_variate_standard_error_is_honest(n, big_n):
    # over many splits, the estimate's error against each split's own mean is standard normal in units of se_subset
    rng = np.random.default_rng(1)
    z, plain, corrected = [], [], []
    for _ in range(600):
        difficulty = rng.gamma(2.0, 1.0, size=big_n)
        controls = np.stack([difficulty * (1 + 0.1 * rng.standard_normal(big_n)) for _ in range(2)], axis=1)
        y = difficulty * (1.5 + 0.3 * rng.standard_normal(big_n))
        fit = training.control_variate_mean(y[:n], controls)
        z.append((fit["estimate"] - y.mean()) / fit["se_subset"])
        plain.append(y[:n].mean() - y.mean())
        corrected.append(fit["estimate"] - y.mean())
    assert abs(np.mean(z)) < 0.15 and 0.9 < np.std(z) < 1.1
    assert np.std(corrected) < 0.5 * np.std(plain)  # the controls remove most of the subset's error


def test_control_variate_standard_errors_follow_the_regression_estimators_formula():
    # y is a known linear function of the controls plus residuals e made orthogonal to [1, controls] on the subset,
    # so the least-squares fit recovers exactly e: the estimate is then exact for the controls' part and Cochran's
    # variance of the regression estimator, (1 - n/N) * sum(e^2) / (n - K - 1) / n, can be written from e alone
    rng = np.random.default_rng(3)
    big_n, n, k = 600, 300, 2  # half the split: the finite-population factor halves the variance
    controls = rng.gamma(2.0, 1.0, size=(big_n, k))
    design = np.column_stack([np.ones(n), controls[:n]])
    e = rng.standard_normal(n)
    e -= design @ np.linalg.lstsq(design, e, rcond=None)[0]  # project out the intercept and the controls
    assert abs(e.mean()) < 1e-12 and np.abs(controls[:n].T @ e).max() < 1e-9
    y = 0.7 + controls[:n] @ np.array([0.4, -1.1]) + e
    fit = training.control_variate_mean(y, controls)
    assert fit["estimate"] == pytest.approx(0.7 + controls.mean(axis=0) @ np.array([0.4, -1.1]), rel=1e-10)
    residual_var = (e ** 2).sum() / (n - k - 1)
    assert fit["se_subset"] == pytest.approx(np.sqrt(residual_var / n * (1 - n / big_n)), rel=1e-9)
    assert fit["se"] == pytest.approx(np.sqrt(y.var(ddof=1) / big_n + residual_var / n * (1 - n / big_n)), rel=1e-9)
    assert fit["r2"] == pytest.approx(1 - (e ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-9)


def test_evaluation_subsets_default_by_dataset_and_flags_win(fitted, tmp_path, monkeypatch):
    # synthetic faces: 250 images each (within 0.5% of exhaustive, bench.py); images from files keep 1,000 for BatchNorm
    for dataset, expected in (("synthetic", 250), ("folder", 1000), ("celeba", 1000)):
        args = eval_curve.parse_args([])
        assert (args.bn_images, args.train_images, args.test_images) == (None, None, None)
        training.fill_subsets(args, dataset)
        assert (args.bn_images, args.train_images, args.test_images) == (expected,) * 3, dataset
    args = eval_curve.parse_args(["--bn-images", "40", "--test-images", "7"])
    training.fill_subsets(args, "synthetic")
    assert (args.bn_images, args.train_images, args.test_images) == (40, 250, 7)
    # an evaluation left to its defaults uses them (sizes below the tiny splits', so that they show)
    monkeypatch.setattr(training, "SYNTHETIC_SUBSETS", {"bn_images": 10, "train_images": 11, "test_images": 12})
    out, _ = fitted
    result = eval_curve.main(["--ckpt", str(out), "--num_points", "2", "--quality-images", "0", "--out", str(tmp_path / "d.eval.json")])
    assert [result["settings"][k] for k in ("bn_images", "train_images", "test_images")] == [10, 11, 12]
