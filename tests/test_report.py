"""Tests of the study report (report.py) on fabricated study folders, and once on a real tiny study."""
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

import ae
from lib import training
from lib import cli
import eval_curve
import fit_curve
import plot
import report
from lib.files import EVAL_FORMAT, UserError, read_result

T = np.linspace(0.0, 1.0, 11).tolist()
MODEL = {"arch": "conv-ae-v1", "latent_dim": 8, "width": 4}
DATA = {"dataset": "synthetic", "synthetic_size": 64, "n_train": None, "n_test": 32}
FLAT, BUMP = 0.0, 0.5  # height of the hump in the middle of a path, in units of the endpoints' loss


def profile(start: float, end: float, bump: float) -> list[float]:
    """Loss along t: the straight line between the end values plus a hump of `bump` * start at t=0.5."""
    return [(1 - t) * start + t * end + bump * start * 4 * t * (1 - t) for t in T]


def fake_path(start: float, end: float, bump: float) -> dict:
    """One path of an evaluation, shaped as eval_curve.py writes it, with summaries from training.summarize."""
    dl = [0.0] + [0.1] * (len(T) - 1)
    path = {"dl": dl, "length": sum(dl)}
    for split, scale in (("train", 0.9), ("test", 1.0)):
        for name in ("loss", "mse"):
            path[f"{split}_{name}"] = profile(scale * start, scale * end, bump)
            path[f"{split}_{name}_se"] = [0.001] * len(T)
    path["summary"] = {name: training.summarize(path[name], T, dl) for name in training.METRICS}
    return path


def fake_eval(loss: str, seeds: tuple, curve_bump: float, segment_bump: float, curve: str = "bezier") -> dict:
    return {"format": eval_curve.EVAL_FORMAT, "curve_ckpt": f"curves/{loss}_s{seeds[0]}-s{seeds[1]}-{curve}.pt",
            "curve": curve, "num_bends": 3, "loss": loss, "vgg_weights": "random" if loss == "perceptual" else None,
            "model": MODEL, "data": DATA, "endpoints": [f"ae/{loss}_s{s}.pt" for s in seeds], "endpoint_seeds": list(seeds),
            "settings": {"num_points": len(T), "test_images": 32}, "t": T, "columns_t": [0.0, 0.5, 1.0],
            "paths": {"curve": fake_path(1.0, 1.1, curve_bump), "segment": fake_path(1.0, 1.1, segment_bump)},
            "files": {"npz": "x.npz", "curve_png": "x.curve.png", "segment_png": "x.segment.png"}}


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)


def make_study(root: Path, curve_bump: float = FLAT, segment_bump: float = BUMP, losses=("mse", "perceptual"),
               fallback: str | None = None, preset: str = "quick", figures: bool = True) -> Path:
    """A study folder with endpoints of seeds 0-2 and their three pairs per loss group, written directly."""
    study = {"format": "aemc-study-v1", "preset": preset, "settings": {"epochs": 2, "curve_epochs": 1},
             "vgg_weights": "random" if fallback else "imagenet", "vgg_fallback": fallback, "device": "cpu",
             "versions": {"python": "3.11.7", "torch": "2.x"}, "dataset": DATA, "n_train_images": 57, "n_test_images": 7,
             "steps": [{"name": "train mse seed 0", "kind": "train", "output": "ae/mse_s0.pt", "seconds": 12.5, "skipped": False},
                       {"name": "train mse seed 1", "kind": "train", "output": "ae/mse_s1.pt", "seconds": 0.0, "skipped": True},
                       {"name": "fit mse s0-s1", "kind": "fit", "output": "curves/mse_s0-s1-bezier.pt", "seconds": 100.0, "skipped": False}]}
    (root / "ae").mkdir(parents=True)
    (root / "curves").mkdir()
    (root / "study.json").write_text(json.dumps(study))
    for loss in losses:
        for seed in (0, 1, 2):
            config = {"model": MODEL, "loss": loss, "seed": seed, "data": DATA, "epochs": 2,
                      "vgg_weights": study["vgg_weights"] if loss == "perceptual" else None}
            metrics = {"checkpoint": f"ae/{loss}_s{seed}.pt", "config": config, "train_loss": 0.9, "test_loss": 1.0 + seed / 100,
                       "test_mse": 0.02, "test_psnr": 16.99, "epochs": 2, "history": []}
            (root / "ae" / f"{loss}_s{seed}.json").write_text(json.dumps(metrics))
            write_png(root / "ae" / f"{loss}_s{seed}.png")
        for seeds in ((0, 1), (0, 2), (1, 2)):
            stem = f"{loss}_s{seeds[0]}-s{seeds[1]}-bezier"
            (root / "curves" / f"{stem}.eval.json").write_text(json.dumps(fake_eval(loss, seeds, curve_bump, segment_bump)))
            if figures:
                write_png(root / "figures" / f"strip_{stem}.png")
                write_png(root / "figures" / f"pair_{stem}.png")
        if figures:
            write_png(root / "figures" / f"fig2_{loss}_bezier.png")
    return root


def evals_of(root: Path) -> list[dict]:
    return [read_result(p, (EVAL_FORMAT,)) for p in sorted((root / "curves").glob("*.eval.json"))]


def links(text: str) -> list[str]:
    return [unquote(m) for m in re.findall(r"\]\(([^)]+)\)", text)]


# ---------------------------------------------------------------- the verdict and the answer

def test_flat_curves_and_bumpy_segments_are_connected(tmp_path):
    root = make_study(tmp_path / "s")
    evals = evals_of(root)
    v = report.verdict([e for e in evals if e["loss"] == "mse"])
    assert v["category"] == "yes" and v["n_pairs"] == 3 and v["n_low_loss"] == 3 and v["n_segment_barriers"] == 3
    assert v["worst_excess"] == pytest.approx(0.0) and v["mean_segment_barrier"] == pytest.approx(0.5 / 1.05)
    text = report.answer(evals)
    assert text.count("connected by low-loss curves although the straight segment is not") == 2  # both groups
    assert "47.6%" in text  # the segments' barrier, quoted: 0.5 / mean(1.0, 1.1)
    assert "about equally high in every group" in text and "close the gap in every group" in text


def test_bumpy_curves_are_not_low_loss(tmp_path):
    flat = report.answer(evals_of(make_study(tmp_path / "flat")))
    evals = evals_of(make_study(tmp_path / "bumpy", curve_bump=BUMP))
    text = report.answer(evals)
    assert report.verdict(evals[:3])["category"] == "no"
    assert "the fitted curves are not low-loss paths" in text and "connected by low-loss curves" not in text
    assert "+40.9%" in text  # worst excess: (1.05 + 0.5) / 1.1 - 1
    assert text != flat


def test_flat_segments_give_linear_connectivity(tmp_path):
    evals = evals_of(make_study(tmp_path / "s", segment_bump=FLAT))
    assert report.verdict(evals[:3])["category"] == "linear"
    assert "linear mode connectivity" in report.answer(evals)


def test_some_bumpy_curves_are_partly_and_named():
    evals = [fake_eval("mse", (0, 1), FLAT, BUMP), fake_eval("mse", (0, 2), BUMP, BUMP)]
    v = report.verdict(evals)
    assert v["category"] == "partly" and v["n_low_loss"] == 1
    sentence = report.verdict_sentence(v)
    assert "partly" in sentence and "seeds 0–2 (bezier): +40.9%" in sentence and "seeds 0–1" not in sentence


def test_thresholds_sit_where_documented():
    # a curve max just under 10% over the worse end is low-loss; just over is not
    low, high = fake_eval("mse", (0, 1), FLAT, BUMP), fake_eval("mse", (0, 2), FLAT, BUMP)
    for result, top in ((low, 1.1 * 1.0999), (high, 1.1 * 1.1001)):
        result["paths"]["curve"]["summary"]["test_loss"]["max"] = top
    assert report.pair_numbers(low)["low_loss"] and not report.pair_numbers(high)["low_loss"]
    # a segment barrier above 10% but less than twice the curve's is no barrier
    result = fake_eval("mse", (0, 1), 0.1, 0.15)
    numbers = report.pair_numbers(result)
    assert numbers["segment_barrier"] > report.SEGMENT_BARRIER and not numbers["has_barrier"]
    assert report.verdict([result])["category"] == "linear"


def test_comparison_names_the_group_with_higher_segment_barriers(tmp_path):
    evals = [fake_eval("mse", (0, 1), FLAT, 0.2), fake_eval("perceptual", (0, 1), BUMP, 0.8)]
    text = report.answer(evals)
    assert "highest in the perceptual group" in text and "close the gap only in the mse group" in text
    assert "single pair" in text
    only = report.answer(evals[:1])
    assert "Only the mse group was evaluated" in only and "highest" not in only


def test_quick_preset_is_called_a_demo(tmp_path):
    evals = evals_of(make_study(tmp_path / "s"))
    assert "demo" in report.answer(evals, {"preset": "quick", "dataset": DATA})
    assert "demo" not in report.answer(evals, {"preset": "full", "dataset": DATA})


# ---------------------------------------------------------------- the report file

def test_report_has_every_table_and_resolving_links_to_every_figure(tmp_path):
    root = make_study(tmp_path / "study")
    out = report.write_report(root, root / "report.md")
    text = out.read_text()
    for header in ("| step | kind | output | time |", "| loss group | seed | train loss | test loss | test MSE | test PSNR (dB) |",
                   "| group | pair | curve | t=0 | t=1 | curve max | curve mean | curve barrier | segment max | segment mean | segment barrier |",
                   "### Train loss", "### Test loss", "## Answer"):
        assert header in text, header
    targets = links(text)
    assert all((out.parent / target).resolve().is_file() for target in targets)
    linked = {(out.parent / target).resolve() for target in targets}
    assert {p.resolve() for p in (root / "figures").iterdir()} <= linked
    assert {(root / "ae" / f"{loss}_s0.png").resolve() for loss in ("mse", "perceptual")} <= linked
    assert "skipped" in text and "Total wall time of the steps run: 1:52." in text  # 12.5 + 100 s; the skipped step not counted
    n_params = sum(p.numel() for p in ae.AutoEncoder(8, 4).parameters())
    assert f"latent_dim 8, width 4, {n_params:,} parameters" in text and "57 training / 7 test images" in text


def test_links_resolve_from_a_report_elsewhere(tmp_path):
    root = make_study(tmp_path / "study")
    out = report.write_report(root, tmp_path / "elsewhere" / "deeper" / "r.md")
    targets = links(out.read_text())
    assert targets and all(t.startswith("../../study/") for t in targets)
    assert all((out.parent / t).resolve().is_file() for t in targets)


def test_missing_figures_are_noted_not_linked(tmp_path):
    root = make_study(tmp_path / "study", figures=False)
    text = report.write_report(root, root / "report.md").read_text()
    assert "run the plot step" in text and not any("figures/" in t for t in links(text))


def test_fallback_warning_is_on_the_first_lines_only_when_set(tmp_path):
    root = make_study(tmp_path / "fallback", fallback="no network to download VGG16 weights")
    first = report.write_report(root, root / "report.md").read_text().splitlines()[:3]
    assert any("WARNING" in line and "randomly initialised" in line and "no network" in line for line in first)
    plain = make_study(tmp_path / "plain")
    assert "randomly initialised" not in report.write_report(plain, plain / "report.md").read_text()


def test_missing_files_are_user_errors(tmp_path):
    root = make_study(tmp_path / "study")
    for p in (root / "curves").glob("*.eval.json"):
        p.unlink()
    with pytest.raises(UserError, match=r"no curve evaluations.*eval"):
        report.write_report(root, root / "report.md")
    shutil.rmtree(root / "ae")
    with pytest.raises(UserError, match=r"no endpoint metrics.*train"):
        report.write_report(root, root / "report.md")
    (root / "study.json").unlink()
    with pytest.raises(UserError, match="study.json is missing; run run_study.py"):
        report.write_report(root, root / "report.md")
    assert not (root / "report.md").exists()


def test_cli_writes_the_default_report_and_errors_in_one_line(tmp_path, capsys):
    root = make_study(tmp_path / "study", losses=("mse",))
    assert report.main(["--study", str(root)]) == root / "report.md"
    assert "Only the mse group" in (root / "report.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(report.main, ["--study", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0 and "does not exist" in err


def plan_seeds_0_and_1(root: Path) -> None:
    """Record in study.json a plan of seeds 0 and 1 with Bezier and PolyChain curves, evaluated at len(T) values of t."""
    study = json.loads((root / "study.json").read_text())
    study["settings"]["num_points"] = len(T)
    study["plan"] = [{"kind": "train", "output": f"ae/{loss}_s{seed}.pt"} for loss in ("mse", "perceptual") for seed in (0, 1)]
    study["plan"] += [{"kind": "eval", "output": f"curves/{loss}_s0-s1-{curve}.eval.json"}
                      for loss in ("mse", "perceptual") for curve in ("bezier", "polychain")]
    (root / "study.json").write_text(json.dumps(study))


def test_files_left_by_earlier_runs_are_left_out(tmp_path):
    texts = {}
    for name in ("clean", "stale"):
        root = make_study(tmp_path / name / "study")
        plan_seeds_0_and_1(root)
        for path in [*root.glob("ae/*_s2.*"), *root.glob("curves/*-s2-*"), *root.glob("figures/*-s2-*")]:
            path.unlink()
        if name == "stale":  # bumpy curves all: were any of these read, the verdicts would change
            for loss in ("mse", "perceptual"):
                (root / "ae" / f"{loss}_s2.json").write_text((root / "ae" / f"{loss}_s1.json").read_text().replace('"seed": 1', '"seed": 2'))
                for seeds in ((0, 2), (1, 2)):  # an earlier run with seeds 0, 1 and 2
                    (root / "curves" / f"{loss}_s{seeds[0]}-s{seeds[1]}-bezier.eval.json").write_text(json.dumps(fake_eval(loss, seeds, BUMP, BUMP)))
            (root / "curves" / "mse_s0-s1-bezier.old.eval.json").write_text(json.dumps(fake_eval("mse", (0, 1), BUMP, BUMP)))  # a copy
            other_t = {**fake_eval("mse", (0, 1), BUMP, BUMP, "polychain"), "settings": {"num_points": 5}}  # planned, other settings
            (root / "curves" / "mse_s0-s1-polychain.eval.json").write_text(json.dumps(other_t))
            (root / "curves" / "perceptual_s0-s1-polychain.pt").write_bytes(b"the curve as refitted since")  # planned, older curve
            refitted = {**fake_eval("perceptual", (0, 1), BUMP, BUMP, "polychain"), "curve_sha256": "0" * 64}
            (root / "curves" / "perceptual_s0-s1-polychain.eval.json").write_text(json.dumps(refitted))
        text = report.main(["--study", str(root)]).read_text()
        texts[name] = [line for line in text.splitlines() if str(root) not in line]
    note = [line for line in texts["stale"] if line.startswith("- Left out, as not of this study's current plan, settings or curves (files of earlier runs): ")]
    assert len(note) == 1 and "endpoints (2): `ae/mse_s2.json`, `ae/perceptual_s2.json`; evaluations (7): `curves/mse_s0-s1-bezier.old.eval.json`, " in note[0]
    assert [line for line in texts["stale"] if line not in note] == texts["clean"]  # the same report, line for line
    text = "\n".join(texts["stale"])
    assert text.count("connected by low-loss curves although the straight segment is not") == 2 and "0–2" not in text
    assert "Evidence: 2 pair(s) in all (mse: 1, perceptual: 1)" in text and "polychain" not in text.split("## Curves")[1]
    assert sorted(re.findall(r"^\| (mse|perceptual) \| (\d) \|", text, flags=re.M)) == [("mse", "0"), ("mse", "1"), ("perceptual", "0"), ("perceptual", "1")]
    # without its plan (a study.json from before plans were recorded) the folder's every evaluation of the settings is read
    study = json.loads((tmp_path / "stale/study/study.json").read_text())
    del study["plan"]
    (tmp_path / "stale/study/study.json").write_text(json.dumps(study))
    assert "seeds 0–2" in report.write_report(tmp_path / "stale/study", tmp_path / "legacy.md").read_text()


# ---------------------------------------------------------------- end to end on real files

def test_report_of_a_real_tiny_study(endpoints, tmp_path):
    root = tmp_path / "study"
    (root / "ae").mkdir(parents=True)
    for path in endpoints:
        for suffix in (".pt", ".json", ".png"):
            shutil.copy(path.with_suffix(suffix), root / "ae" / path.with_suffix(suffix).name)
    curve = root / "curves" / "mse_s0-s1-bezier.pt"
    fit_curve.main(["--a", str(root / "ae/mse_s0.pt"), "--b", str(root / "ae/mse_s1.pt"), "--epochs", "1", "--batch-size", "32",
                    "--bn-images", "32", "--out", str(curve)])
    eval_curve.main(["--ckpt", str(curve), "--num_points", "3", "--columns", "2", "--bn-images", "32", "--train-images", "32",
                     "--test-images", "16"])
    plot.main([str(curve.with_name("mse_s0-s1-bezier.eval.json")), "--out", str(root / "figures")])
    (root / "study.json").write_text(json.dumps({"format": "aemc-study-v1", "preset": "quick", "vgg_fallback": None, "steps": []}))
    text = report.write_report(root, root / "report.md").read_text()
    assert "endpoints 3; curves 1" in text and "**mse group — " in text and "Only the mse group" in text
    assert sorted(Path(t).name for t in links(text)) == ["fig2_mse_bezier.png", "fit_mse_s0-s1-bezier.png", "mse_s0.png",
                                                          "pair_mse_s0-s1-bezier.png", "recon_mse_s0-s1-bezier.gif",
                                                          "strip_mse_s0-s1-bezier.png"]
    quality = text[text.index("## Image quality"):]
    assert "Image quality (SSIM): **mse — " in text and "LPIPS was not measured: no ImageNet VGG16 weights" in quality
    assert re.search(r"\| mse \| seeds 0–1 \(bezier\) \| 0\.\d{4} ± 0\.\d{4} \| 0\.\d{4} ± 0\.\d{4} \| 0\.\d{4} ± 0\.\d{4} \(t = \d\.\d\d\) \|", quality)
    assert "| mse | seeds 0–1 | bezier | 1 | ref |" in text and re.search(r"Fits: (all 1 converged|\*\*1 of 1 curve fits not)", text)


# ---------------------------------------------------------------- standard errors and the checks of a fit

def noisy_path(profile_values: list[float], noise: float, images: int = 200, seed: int = 0) -> dict:
    """A path whose per-image test losses scatter by `noise` (relative, independently at every t) around `profile_values`."""
    rng = np.random.default_rng(seed)
    per_image = np.asarray(profile_values)[:, None] * (1 + noise * rng.standard_normal((len(T), images)))
    dl = [0.0] + [0.1] * (len(T) - 1)
    means = per_image.mean(axis=1).tolist()
    path = {"dl": dl, "length": sum(dl)}
    for name in training.METRICS:
        path[name], path[f"{name}_se"] = means, [0.001] * len(T)
    path["summary"] = {name: training.summarize(means, T, dl, per_image) for name in training.METRICS}
    return path


def test_barrier_se_is_the_paired_standard_error_at_the_barrier():
    rng = np.random.default_rng(1)
    per_image = 1.0 + 0.2 * rng.standard_normal((len(T), 50))
    per_image[5] += 0.3  # t = 0.5 stands 0.3 above the rest for every image
    s = training.summarize(per_image.mean(axis=1).tolist(), T, [0.0] + [0.1] * 10, per_image)
    excess = per_image[5] - (0.5 * per_image[0] + 0.5 * per_image[-1])
    assert s["t_barrier"] == 0.5 and s["barrier"] == pytest.approx(excess.mean())
    assert s["barrier_se"] == pytest.approx(excess.std(ddof=1) / np.sqrt(50))
    assert s["barrier_rel_se"] == pytest.approx(s["barrier_se"] / ((s["start"] + s["end"]) / 2))


def test_barrier_se_of_control_variate_estimates_adds_the_estimators_own_error():
    # per-image values of 50 subset images standing for a split of 5,000; the point at t = 0.5 carries its own error
    # (0 at the ends, which are anchors; a different one at each point between, so the wrong point's would show)
    rng = np.random.default_rng(2)
    per_image = 1.0 + 0.2 * rng.standard_normal((len(T), 50))
    per_image[5] += 0.3  # the barrier, and the highest point, at t = 0.5
    own = [0.0] + [0.0005 * (4 + k) for k in range(1, 10)] + [0.0]
    means = per_image.mean(axis=1)
    s = training.summarize(means.tolist(), T, [0.0] + [0.1] * 10, per_image, population=5000, subset_se=own)
    assert s["t_barrier"] == 0.5 and int(np.argmax(means)) == 5
    excess = per_image[5] - (0.5 * per_image[0] + 0.5 * per_image[-1])
    sampling = excess.var(ddof=1) / 5000  # the split's own sampling error, about as large as the estimator's here
    assert own[5] ** 2 > 0.5 * sampling
    assert s["barrier_se"] == pytest.approx(np.sqrt(sampling + own[5] ** 2))
    assert s["barrier_se"] < excess.std(ddof=1) / np.sqrt(50)  # far better known than from the 50 images alone
    worse = 0 if means[0] >= means[-1] else -1
    diff = per_image[5] - per_image[worse]
    assert s["excess_se"] == pytest.approx(np.sqrt(diff.var(ddof=1) / 5000 + own[5] ** 2) / means[worse])


@pytest.mark.parametrize("noise, barrier", [(0.02, True), (3.0, False)])
def test_a_segment_barrier_within_two_se_of_zero_counts_as_none(noise, barrier):
    result = fake_eval("mse", (0, 1), FLAT, BUMP)
    result["paths"]["segment"] = noisy_path(profile(1.0, 1.1, 0.3), noise)
    numbers = report.pair_numbers(result)
    assert numbers["segment_barrier"] > report.SEGMENT_BARRIER  # the same hump either way
    assert numbers["has_barrier"] is barrier
    assert (numbers["segment_barrier"] > 2 * numbers["segment_barrier_se"]) is barrier


def test_a_curve_excess_within_two_se_of_zero_is_low_loss():
    result = fake_eval("mse", (0, 1), FLAT, BUMP)
    result["paths"]["curve"] = noisy_path(profile(1.0, 1.1, BUMP), 5.0)  # 40% over the worse end, but lost in the noise
    numbers = report.pair_numbers(result)
    assert numbers["excess"] > report.CURVE_EXCESS and numbers["excess"] < 2 * numbers["excess_se"] and numbers["low_loss"]
    result["paths"]["curve"] = noisy_path(profile(1.0, 1.1, BUMP), 0.02)
    assert not report.pair_numbers(result)["low_loss"]


def test_every_barrier_is_printed_with_its_se(tmp_path):
    root = make_study(tmp_path / "s")
    for path in (root / "curves").glob("*.eval.json"):
        e = json.loads(path.read_text())
        e["paths"] = {"curve": noisy_path(profile(1.0, 1.1, FLAT), 0.05), "segment": noisy_path(profile(1.0, 1.1, BUMP), 0.05)}
        path.write_text(json.dumps(e))
    text = report.write_report(root, root / "report.md").read_text()
    curves_tables = text[text.index("## Curves"):text.index("## Curve fits")]
    rows = [line for line in curves_tables.splitlines() if line.startswith(("| mse |", "| perceptual |"))]
    assert len(rows) == 12  # 6 pairs, train and test tables
    assert all(len(re.findall(r"\d ± \d[^(|]*\(-?\d+\.\d% ± \d+\.\d%\)", row)) == 2 for row in rows), rows[0]
    assert re.search(r"relative test barrier is \d+\.\d% ± \d+\.\d% at worst", text)


@pytest.mark.parametrize("dip, flagged", [(0.10, True), (0.0, False)])
def test_a_curve_below_both_ends_says_the_endpoints_look_under_trained(dip, flagged):
    values = profile(1.0, 1.1, FLAT)
    values[1] *= 1 - dip  # t = 0.1
    result = fake_eval("mse", (0, 1), FLAT, BUMP)
    result["paths"]["curve"] = noisy_path(values, 0.01)
    below = result["paths"]["curve"]["summary"]["test_loss"]["below_ends"]
    text = report.checks([result])
    if flagged:
        assert below["t"] == pytest.approx(0.1) and below["z"] > 2
        # t = 0.1 sits at 0.9 * 1.01; the better end is 1.0
        assert below["depth"] == pytest.approx(1 - 0.9 * 1.01, abs=0.01)
        assert "look under-trained" in text and f"{100 * below['depth']:.1f}% below the better endpoint" in text
    else:
        assert below is None and "no sign of under-trained endpoints" in text


def fit_history(values: list[float]) -> list[dict]:
    return [{"epoch": i, "lr": 1e-3, "train_loss": None if i == 0 else v, "test_loss_t05": v} for i, v in enumerate(values)]


def test_convergence_is_judged_on_the_last_quarter_of_epochs():
    still_falling = fit_history([1.0, 0.5, 0.45, 0.42, 0.40, 0.38, 0.36, 0.34, 0.30])  # 8 epochs: last quarter = 2 epochs
    check = training.convergence(still_falling)
    assert check["last_quarter_epochs"] == 2 and check["last_quarter_drop"] == pytest.approx((0.36 - 0.30) / 0.36)
    assert not check["converged"]
    settled = fit_history([1.0, 0.5, 0.45, 0.42, 0.40, 0.38, 0.37, 0.365, 0.36])
    assert training.convergence(settled)["converged"]
    noisy_rise = fit_history([1.0, 0.5, 0.6])  # a rise is not a fall: converged by this test, whatever its noise
    assert training.convergence(noisy_rise)["converged"]


def test_unconverged_fits_are_named_in_the_report(tmp_path):
    root = make_study(tmp_path / "s")
    for i, path in enumerate(sorted((root / "curves").glob("*.eval.json"))):
        e = json.loads(path.read_text())
        history = fit_history([1.0, 0.5, 0.45, 0.40] if i == 0 else [1.0, 0.5, 0.45, 0.448])
        e["fit"] = {"epochs": 3, "schedule": "ref", "lr": 1e-3, "history": history, **training.convergence(history)}
        path.write_text(json.dumps(e))
    text = report.write_report(root, root / "report.md").read_text()
    assert "**1 of 6 curve fits not converged**" in text and "fell 11.1% over the last 1 epoch(s)" in text
    assert text.count("| **NO** |") == 1 and text.count("| yes |\n") >= 5


# ---------------------------------------------------------------- the aligned segment

def test_the_aligned_segments_barrier_and_how_much_alignment_removes(tmp_path):
    root = make_study(tmp_path / "s")
    for path in (root / "curves").glob("mse_*.eval.json"):  # the mse group only: a segment bump of 0.5, aligned 0.2
        e = json.loads(path.read_text())
        e["paths"]["aligned_segment"] = fake_path(1.0, 1.1, 0.2)
        path.write_text(json.dumps(e))
    text = report.write_report(root, root / "report.md").read_text()
    tables = text[text.index("## Curves"):text.index("## Curve fits")]
    assert tables.count("| segment barrier | aligned segment barrier |") == 2 and "changes no network's function" in tables
    rows = [line for line in tables.splitlines() if line.startswith(("| mse |", "| perceptual |"))]
    cells = [[cell.strip() for cell in row.strip("|").split("|")][11] for row in rows]
    assert len(rows) == 12 and all(cell.endswith(" (19.0%)") if row.startswith("| mse") else cell == "–" for row, cell in zip(rows, cells)), cells  # 0.2 / 1.05
    sentences = [line for line in text.splitlines() if line.startswith("*Alignment")]
    assert sentences == [
        "*Alignment, mse group:* with B's units permuted to match A's (weight matching) the straight segment's relative test "
        "barrier is 19.0% on average instead of 47.6%, so alignment removes 60.0% of the segment's barrier (per pair: "
        "seeds 0–1 (bezier) 60.0%, seeds 0–2 (bezier) 60.0%, seeds 1–2 (bezier) 60.0%); the aligned segment still has a "
        "barrier by the criterion above for 3 of 3 pairs."]
    assert text.index("**mse group") < text.index("*Alignment, mse") < text.index("**perceptual group")
    plain = make_study(tmp_path / "plain")
    assert "lignment" not in report.write_report(plain, plain / "report.md").read_text()


# ---------------------------------------------------------------- the answer first

def lead_rows(text: str) -> dict[str, list[str]]:
    """The cells of the table of the report's first section, by group, checking that the first section is the answer."""
    sections = re.findall(r"^## .*$", text, flags=re.M)
    assert sections[0] == "## The answer" and sections[1] == "## Set-up" and sections[-1] == "## Answer in detail", sections
    lead = text[text.index("## The answer"):text.index("## Set-up")]
    lines = [line for line in lead.splitlines() if line.startswith("|")]
    assert lines[0] == ("| group | verdict | pairs | curve excess over worse end | segment barrier (relative) | "
                        "aligned segment barrier | fits converged | endpoints under-trained |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert len({row[0] for row in rows}) == len(rows)  # one row per group
    return {row[0]: row for row in rows}


def percent_se(values: list[float], ses: list[float]) -> str:
    """The mean of `values` ± the standard error of that mean, in percent, as the report prints a number with its SE."""
    return f"{100 * np.mean(values):.1f}% ± {100 * np.sqrt(np.sum(np.square(ses))) / len(ses):.1f}%"


def noisy_study(root: Path) -> Path:
    """make_study's folder with per-image losses (so standard errors) and a different hump per pair; every fit with a
    history, the first (mse seeds 0-1) not converged; the perceptual curve of seeds 1-2 dips below both ends at t = 0.1."""
    make_study(root)
    for i, path in enumerate(sorted((root / "curves").glob("*.eval.json"))):
        e = json.loads(path.read_text())
        curve = profile(1.0, 1.1, 0.07 + 0.01 * i)  # 1.8% to 6.4% over the worse end: low-loss
        if path.name.startswith("perceptual_s1-s2"):
            curve[1] *= 0.9
        e["paths"] = {"curve": noisy_path(curve, 0.02, seed=i), "segment": noisy_path(profile(1.0, 1.1, 0.3 + 0.05 * i), 0.05, seed=10 + i)}
        history = fit_history([1.0, 0.5, 0.45, 0.40] if i == 0 else [1.0, 0.5, 0.45, 0.448])
        e["fit"] = {"epochs": 3, "schedule": "ref", "lr": 1e-3, "history": history, **fit_curve.convergence(history)}
        path.write_text(json.dumps(e))
    return root


def test_the_report_leads_with_one_table_of_the_groups_verdicts(tmp_path):
    root = noisy_study(tmp_path / "s")
    text = report.write_report(root, root / "report.md").read_text()
    rows = lead_rows(text)
    assert list(rows) == ["mse", "perceptual"]
    for loss in ("mse", "perceptual"):
        summaries = [json.loads(p.read_text())["paths"] for p in sorted((root / "curves").glob(f"{loss}_*.eval.json"))]
        curve, segment = ([s[path]["summary"]["test_loss"] for s in summaries] for path in ("curve", "segment"))
        excess = [c["max"] / max(c["start"], c["end"]) - 1 for c in curve]
        assert len(set(np.round(excess, 4))) == 3  # the pairs differ, so a wrong mean would show
        group, verdict_word, pairs, excess_cell, segment_cell, aligned, fits, ends = rows[loss]
        assert pairs == "3" and verdict_word == "connected; segment barrier"
        assert excess_cell == "+" + percent_se(excess, [c["excess_se"] for c in curve])
        assert segment_cell == percent_se([s["barrier_rel"] for s in segment], [s["barrier_rel_se"] for s in segment])
        assert aligned == "—"  # no aligned segment evaluated
        assert fits == {"mse": "2 of 3", "perceptual": "3 of 3"}[loss]  # mse seeds 0-1 is marked not converged
        dips = [c["below_ends"] for c in curve if c["below_ends"]]
        assert len(dips) == {"mse": 0, "perceptual": 1}[loss]
        assert ends == (f"**yes**: 1 of 3 curves dip below both ends (deepest {100 * dips[0]['depth']:.1f}%)" if dips else "no")


def test_the_answer_is_said_once_first_and_the_detail_last(tmp_path):
    root = noisy_study(tmp_path / "s")
    text = report.write_report(root, root / "report.md").read_text()
    lead = text[text.index("## The answer"):text.index("## Set-up")]
    detail = text[text.index("## Answer in detail"):]
    sentences = [line for line in lead.splitlines() if line.startswith("**")]
    assert [s.split("**")[1] for s in sentences] == ["Low-loss curves between the endpoints: yes", "A barrier on the straight segment: yes"]
    assert "close the gap in every group" in sentences[0] and "6 of 6 fitted curves" in sentences[0]
    assert "has a barrier for 6 of 6 pairs" in sentences[1] and "highest in the perceptual group" in sentences[1]
    for paragraph in [p.strip() for p in lead.split("\n\n")[1:] if p.strip()]:  # the table and the sentences: nowhere else
        assert text.count(paragraph) == 1, paragraph
    # the detail keeps what the lead does not say: the criterion, each group's verdict in numbers, the checks, the caveats
    for said in ("Criterion (test loss)", "**mse group — ", "**perceptual group — ", "Fits: **1 of 6 curve fits not converged**",
                 "Endpoints: **the endpoints look under-trained**", "Evidence: 6 pair(s)"):
        assert text.count(said) == 1 and said in detail, said
    assert "Comparison:" not in text and "the answer is in the last section" not in text


def test_the_aligned_column_averages_the_pairs_where_it_was_evaluated(tmp_path):
    root = make_study(tmp_path / "s")
    for i, name in enumerate(("mse_s0-s1", "mse_s0-s2")):  # two of the mse group's three pairs
        path = root / "curves" / f"{name}-bezier.eval.json"
        e = json.loads(path.read_text())
        e["paths"]["aligned_segment"] = fake_path(1.0, 1.1, 0.1 + 0.1 * i)
        path.write_text(json.dumps(e))
    rows = lead_rows(report.write_report(root, root / "report.md").read_text())
    aligned = [json.loads((root / "curves" / f"{name}-bezier.eval.json").read_text())["paths"]["aligned_segment"]["summary"]["test_loss"]
               for name in ("mse_s0-s1", "mse_s0-s2")]
    assert rows["mse"][5] == f"{100 * np.mean([a['barrier_rel'] for a in aligned]):.1f}% (2 of 3 pairs)" == "14.3% (2 of 3 pairs)"
    assert rows["perceptual"][5] == "—"
    assert rows["mse"][6] == "not recorded" and rows["mse"][7] == "not checked (no per-image losses)"  # no fit history, no per-image losses


def test_the_two_sentences_say_partly_and_name_the_groups():
    evals = [fake_eval("mse", (0, 1), FLAT, BUMP), fake_eval("mse", (0, 2), BUMP, BUMP), fake_eval("perceptual", (0, 1), FLAT, BUMP)]
    text = report.answer_summary(evals)
    assert "**Low-loss curves between the endpoints: partly** — the fitted curves close the gap only in the perceptual group" in text
    assert "(2 of 3 fitted curves" in text and "worst curve excess: mse 40.9%, perceptual 0.0%" in text
    # the bumpy curve's segment is no worse than the curve: no barrier for that pair
    assert "**A barrier on the straight segment: for some pairs** — " in text and "has a barrier for 2 of 3 pairs" in text
    assert "| mse | partly connected | 2 |" in text and "| perceptual | connected; segment barrier | 1 |" in text
    one = report.answer_summary(evals[2:])
    assert "close the gap in the perceptual group" in one and "Only the perceptual group was evaluated" in one and "highest" not in one


def test_the_width_sentence_reads_the_trend_and_a_significant_dip_but_not_noise():
    def row(width, act, weights, se=0.02, low=3):
        return {"width": width, "barriers": {"activations": (act, se), "weights": (weights, se)}, "n_pairs": 3,
                "n_low_loss": low, "worst_excess": 0.01, "endpoint_loss": 0.01 * (1 + width / 64)}
    # activations: 1.0 -> 0.5 (dip, 17 SE) -> 4.0 grows; weights: 1.0 -> 0.98 (within 1 SE) -> 2.0 grows
    text = report.width_sentence("mse", [row(64, 4.0, 2.0), row(8, 1.0, 1.0), row(16, 0.5, 0.98)])
    act, weights = text.split("; with weight matching")
    assert "aligned barrier grows with width (100.0% ± 2.0% at width 8, 400.0% ± 2.0% at width 64" in act
    assert "not monotonic, lowest at width 16: 50.0% ± 2.0%" in act
    assert "grows with width" in weights and "not monotonic" not in weights
    assert "the curve stays low at every width" in text and "differs by up to 77.8% between widths" in text  # 0.02 / 0.01125
    shrinking = report.width_sentence("mse", [row(8, 3.0, 3.0), row(64, 1.0, 2.99, low=2)])
    assert "activation matching the aligned barrier shrinks" in shrinking and "does not change beyond 2 SE" in shrinking
    assert "the curve is not low-loss at width 64" in shrinking
    one = report.width_sentence("mse", [row(32, 4.0, 2.0)])
    assert "no trend to read" in one and "differs" not in one and "grows" not in one
