"""Tests of the whole study in one command (run_study.py) on a micro preset."""
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ae
from lib import cli
import report
import run_study
from lib.files import UserError
from test_data import fake_celeba

MICRO = ["--synthetic-size", "48", "--n-test", "20", "--width", "4", "--latent-dim", "8", "--batch-size", "16",
         "--epochs", "1", "--curve-epochs", "1", "--seeds", "0", "1", "--num-points", "3", "--bn-images", "16",
         "--train-images", "16", "--test-images", "8", "--vgg-weights", "random", "--device", "cpu",
         "--fge-cycles", "2", "--fge-cycle", "1", "--ensemble-k", "3", "--ensemble-points", "3", "--ensemble-losses", "mse", "perceptual",
         "--plane-grid", "3", "--simplex-epochs", "1"]


# Holds the study folder argv[1] locked, as a running study would, until it is killed.
HOLD_LOCK = """
import sys, time
from lib import executors
with executors.folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def ran_steps(capsys):
    """Names of the steps the last run executed (not skipped), from its console output."""
    return re.findall(r"^\[\d+/\d+\] (.+?)  \(elapsed", capsys.readouterr().out, flags=re.M)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    args = [*MICRO, "--out", str(tmp / "study"), "--cache-dir", str(tmp / "cache")]
    report = run_study.main(args)
    return tmp / "study", args, report


def test_report_has_every_table_and_figure(study):
    folder, _, report = study
    text = report.read_text()
    assert report == folder / "report.md"
    for heading in ("## Set-up", "## Endpoints", "## Curves", "## Figures", "## Planes (Figure 1)", "## Objectives", "## Ensembles",
                    "## Function space", "## Linear probes of the code", "## Simplexes (mode-connecting complexes)", "## Answer"):
        assert heading in text
    for loss in ("mse", "perceptual"):
        assert f"figures/fig2_{loss}_bezier.png" in text and f"figures/strip_{loss}_s0-s1-bezier.png" in text
        assert f"figures/plane_{loss}_s0-s1-bezier.png" in text and re.search(r"Test loss at w0 .*, θ .*, w1 .*", text)
        assert (folder / f"figures/fig2_{loss}_bezier.png").is_file()
        assert re.search(rf"\*\*{loss} group — (yes|partly|no)", text)
    for link in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (folder / link).is_file(), link
    assert "Left out" not in text  # every file of this run fits its plan and settings
    assert re.search(r"Complexes: \*\*mse group — (yes|no)\*\*", text) and "### perceptual group\n\n**perceptual group" in text
    assert "*Alignment, mse group:*" in text and "*Alignment, perceptual" not in text  # the quick preset aligns the mse group only
    record = json.loads((folder / "study.json").read_text())
    assert record["vgg_weights"] == "random" and record["n_train_images"] == 48
    kinds = ["train"] * 4 + ["fit"] * 2 + ["eval"] * 2 + ["fit", "eval-arclength"] + ["simplex"] * 2 + ["plane"] * 2 + ["ensemble"] * 2 + ["function_space"] * 2 + ["plot"]
    assert [s["kind"] for s in record["steps"]] == kinds  # the arc-length objective: mse only
    assert "mse_s0-s1-bezier-arclength.pt" in record["steps"][8]["output"]
    objectives = text[text.index("## Objectives"):text.index("## Ensembles")]
    assert "| mse | seeds 0–1 | uniform |" in objectives and "| mse | seeds 0–1 | arclength |" in objectives
    assert re.search(r"arc-length objective's curve has max test loss \d\.\d{3}× the uniform", objectives)
    space = text[text.index("## Function space"):text.index("## Answer")]
    for loss in ("mse", "perceptual"):
        assert f"function_space/{loss}/heatmaps.png" in space and f"function_space/{loss}/embedding.png" in space
        fs = json.loads((folder / f"function_space/{loss}/function_space.json").read_text())
        # 2 endpoints, their snapshots (quick preset: 1 per epoch for mse, 2 for perceptual; 1 epoch), 2 FGE members
        # (the ensemble step), one curve and its segment at 11 values of t each
        kinds = {k: fs["kinds"].count(k) for k in set(fs["kinds"])}
        assert kinds == {"endpoint": 2, "snapshot": {"mse": 2, "perceptual": 4}[loss], "fge member": 2, "curve point": 11, "segment point": 11}
    # two seeds make one pair of endpoints: no standard error, and the sentence says so
    assert re.search(r"The independent endpoints \([-\d.e]+, [\d.]+ of their own error\) are (further apart|closer) than "
                     r"points of one curve \(one pair, so no standard error; [-\d.e]+ ± [-\d.e]+, ", space)
    probes = text[text.index("## Linear probes of the code"):text.index("## Answer")]
    for loss in ("mse", "perceptual"):
        for path in ("curve", "segment"):
            assert re.search(rf"\*{loss} group, {path}:\* the code (keeps \(within 2 SE\)|loses) its probe accuracy \(.*\) and (keeps \(within 2 SE\)|loses) its probe R²", probes)
        assert f"figures/probe_{loss}_s0-s1-bezier.png" in probes and (folder / f"figures/probe_{loss}_s0-s1-bezier.png").is_file()
    chosen = text[text.index("#### Ensembles of 3 chosen for diversity"):]
    assert "on the first 9 images of the validation split" in chosen  # 48 // 5 = 9 valid images and "| greedy |" in chosen and "| uniform |" in chosen
    assert re.search(r"greedy: ([\d.e-]+ ± [\d.e-]+ \([\d.]+%\) (lower|higher)|no different \(within 2 SE: [-\d.e]+ ± )", chosen)


def test_second_run_skips_everything(study, capsys):
    folder, args, _ = study
    capsys.readouterr()
    run_study.main(args)
    assert ran_steps(capsys) == []


def snapshot(folder):
    """Every file under `folder` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_folder_in_use_is_refused_in_one_line_and_a_killed_runs_lock_is_taken_over(study, monkeypatch, capsys):
    folder, args, report = study
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=Path(__file__).resolve().parent.parent,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(folder)

        def no_data(*a, **kw):
            raise AssertionError("data loaded although the folder is in use")

        monkeypatch.setattr(run_study.data, "load_split", no_data)  # the refusal comes first
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            cli.run(run_study.main, args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1
        assert f"{folder} is in use by another run (PID {holder.pid} on host {socket.gethostname()}, started " in err
        assert snapshot(folder) == before
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    monkeypatch.undo()
    assert json.loads((folder / ".lock").read_text())["pid"] == holder.pid  # the killed run's lock file stays
    with pytest.raises(ProcessLookupError):
        os.kill(holder.pid, 0)
    assert run_study.main(args) == report  # and is taken over
    assert report.is_file() and not (folder / ".lock").exists()


def test_deleting_a_curve_reruns_only_it_and_what_depends_on_it(study, capsys):
    folder, args, _ = study
    (folder / "curves/mse_s0-s1-bezier.pt").unlink()
    capsys.readouterr()
    run_study.main(args)
    assert ran_steps(capsys) == ["fit mse bezier seeds 0-1", "eval mse bezier seeds 0-1", "plane mse bezier seeds 0-1",
                                 "ensembles mse bezier", "function space mse", "plot figures"]


def test_changed_setting_reruns_the_steps_it_touches(study, capsys):
    folder, args, _ = study
    capsys.readouterr()
    run_study.main([*args, "--num-points", "4"])
    assert ran_steps(capsys) == ["eval mse bezier seeds 0-1", "eval perceptual bezier seeds 0-1",
                                 "eval mse bezier seeds 0-1 (arc-length objective)", "plot figures"]
    assert len(json.loads((folder / "curves/mse_s0-s1-bezier.eval.json").read_text())["t"]) == 4


def test_report_reads_only_the_current_plans_files_also_of_a_moved_study(study, tmp_path):
    folder, _, _ = study
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    # as an earlier run with seeds 0, 1, 2 and --curve both would have left them
    for src, dst in (("ae/mse_s1.json", "ae/mse_s2.json"), ("curves/mse_s0-s1-bezier.eval.json", "curves/mse_s0-s2-bezier.eval.json")):
        (moved / dst).write_text((moved / src).read_text().replace("s1", "s2").replace('"seed": 1', '"seed": 2'))
    shutil.copytree(moved / "ensembles/mse_bezier", moved / "ensembles/mse_polychain")
    setup, text = report.main(["--study", str(moved)]).read_text().split("## Endpoints")
    assert re.findall(r"^\| mse \| (\d) \|", text, flags=re.M) == ["0", "1"]  # the endpoints table
    assert "s0-s2" not in text and "seeds 0–2" not in text and "Evidence: 2 pair(s) in all (mse: 1, perceptual: 1)" in text
    assert re.findall(r"^### (\w+) group, (\w+) curve", text, flags=re.M) == [("mse", "bezier"), ("perceptual", "bezier")]
    assert ("endpoints (1): `ae/mse_s2.json`; evaluations (1): `curves/mse_s0-s2-bezier.eval.json`; "
            "ensembles (1): `ensembles/mse_polychain/ensemble.json`") in setup


def test_failing_step_is_named_and_finished_steps_kept(tmp_path, monkeypatch):
    import fit_curve

    def broken(argv):
        raise run_study.UserError("simulated failure")

    monkeypatch.setattr(fit_curve, "main", broken)
    args = [*MICRO, "--out", str(tmp_path / "study"), "--cache-dir", str(tmp_path / "cache"), "--losses", "mse"]
    with pytest.raises(run_study.UserError, match="step 3/.* 'fit mse bezier seeds 0-1': simulated failure"):
        run_study.main(args)
    assert (tmp_path / "study/ae/mse_s0.pt").is_file() and (tmp_path / "study/ae/mse_s1.pt").is_file()
    assert not (tmp_path / "study/report.md").exists()
    assert not (tmp_path / "study/.lock").exists()  # the lock goes with the error

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_curve, "main", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study.main(args)
    assert not (tmp_path / "study/.lock").exists()  # and with Ctrl-C


def test_data_that_cannot_be_loaded_leaves_no_study_folder(tmp_path):
    (tmp_path / "images").mkdir()
    args = [*MICRO, "--dataset", "folder", "--data-root", str(tmp_path / "images"), "--out", str(tmp_path / "new" / "study"),
            "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(run_study.UserError, match="no images"):
        run_study.main(args)
    assert not (tmp_path / "new").exists()


def test_full_preset_runs_end_to_end_on_a_tiny_celeba(tmp_path):
    """The full preset's code path (CelebA loader, VGG16 relu1_2, relu2_2 and relu3_3 from a weight file,
    snapshot ensemble) on a CelebA of 10 JPEGs, every size overridden small: VGG16 at 64x64 is slow on a CPU. The
    steps that read nothing of the full preset's own (simplex, function space) run in the quick study's tests."""
    parts = [0, 2, 0, 1, 0, 2, 1, 0, 2, 0]  # partition of each image: 0 train, 1 valid, 2 test
    fake_celeba(tmp_path / "celeba", "txt", parts)
    torch.manual_seed(0)
    torch.save(ae.vgg16_trunk().state_dict(), tmp_path / "vgg16.pth")  # VGG16's features, randomly initialised
    folder = tmp_path / "study"
    report = run_study.main([
        "--preset", "full", "--data-root", str(tmp_path / "celeba"), "--vgg-weights", str(tmp_path / "vgg16.pth"),
        "--out", str(folder), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--seeds", "0", "1", "--width", "4",
        "--latent-dim", "8", "--batch-size", "4", "--epochs", "1", "--curve-epochs", "1", "--num-points", "3", "--bn-images", "8",
        "--train-images", "4", "--test-images", "8", "--fge-cycles", "1", "--fge-cycle", "1", "--ensemble-k", "2",
        "--ensemble-points", "3", "--plane-grid", "3", "--no-simplex", "--no-function-space"])
    n_train, n_test = parts.count(0), parts.count(2)  # the partition's train and test splits
    setup = report.read_text().split("## Endpoints")[0]
    assert "Left out" not in setup  # its evaluations fit its settings: 8 test images asked, the 3 there used
    assert f"- Dataset: celeba, {n_train} training / {n_test} test images" in setup and "- Preset: full" in setup
    assert "`vgg_layers=['relu1_2', 'relu2_2', 'relu3_3']`" in setup and f"perceptual (VGG16 weights: {tmp_path / 'vgg16.pth'})" in setup
    for loss, seed in itertools.product(("mse", "perceptual"), (0, 1)):
        config = json.loads((folder / f"ae/{loss}_s{seed}.json").read_text())["config"]
        assert config["data"]["dataset"] == "celeba" and config["loss"] == loss
        assert config["vgg_layers"] == (["relu1_2", "relu2_2", "relu3_3"] if loss == "perceptual" else None)
        assert config["vgg_weights"] == ("file:vgg16.pth" if loss == "perceptual" else None)  # the file, no random fallback
    for loss in ("mse", "perceptual"):
        evaluation = json.loads((folder / f"curves/{loss}_s0-s1-bezier.eval.json").read_text())
        assert evaluation["data"]["dataset"] == "celeba" and evaluation["settings"]["test_images"] == n_test  # 8 asked, 3 there
        plane = json.loads((folder / f"curves/{loss}_s0-s1-bezier.plane.json").read_text())
        assert plane["data"]["dataset"] == "celeba" and plane["settings"]["grid"] == 3 and plane["settings"]["test_images"] == n_test
        ensembles = json.loads((folder / f"ensembles/{loss}_bezier/ensemble.json").read_text())
        assert "sse" in ensembles["methods"] and "sse" in {row["method"] for row in ensembles["table"]}


def width_table(text: str, group: str) -> list[list[str]]:
    """The rows of the width report's table for `group`, as cells."""
    section = text.split(f"## {group} group", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if re.match(r"\| \d", line)]


def test_a_width_sweep_reports_one_row_per_width_from_its_evaluations_and_a_new_width_runs_only_its_steps(tmp_path, capsys):
    import report as report_module
    from lib.files import read_result

    micro = MICRO[:MICRO.index("--width")] + MICRO[MICRO.index("--width") + 2:]  # --widths names them
    args = [*micro, "--losses", "mse", "--out", str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "cache")]  # 2 seeds: 1 pair
    path = run_study.main([*args, "--widths", "2", "4"])
    ran = ran_steps(capsys)
    assert path == tmp_path / "sweep" / "report.md"
    assert {name.split()[0] for name in ran} == {"train", "fit", "eval", "plot"}  # no plane, ensembles, simplex, function space
    assert sum("(weights matching)" in name for name in ran) == 2  # the pair at each width, by the second matcher too
    rows = width_table(path.read_text(), "mse")
    assert [r[0] for r in rows] == ["2", "4"]
    for row in rows:
        folder = tmp_path / "sweep" / f"width{row[0]}"
        evals = [read_result(p, ("aemc-eval-v1",)) for p in sorted((folder / "curves").glob("*-bezier.eval.json"))]
        weights = [read_result(p, ("aemc-eval-v1",)) for p in sorted((folder / "curves").glob("*-bezier.eval-weights.json"))]
        assert len(evals) == len(weights) == 1 and {e["model"]["width"] for e in evals + weights} == {int(row[0])}
        mean = lambda es, path: sum(e["paths"][path]["summary"]["test_loss"]["barrier_rel"] for e in es) / len(es)  # noqa: E731
        assert row[2] == "1"  # --epochs at every width
        assert row[4].startswith(report_module.pct(mean(evals, "segment")))
        assert row[5].startswith(report_module.pct(mean(evals, "aligned_segment")))  # activation matching, the default
        assert row[7].startswith(report_module.pct(mean(weights, "aligned_segment")))
        assert {e["alignment"]["method"] for e in weights} == {"weight matching"}
        assert row[9] == f"{sum(e['alignment']['converged'] for e in weights)} of 1"
    assert (tmp_path / "sweep" / "figures" / "widths_mse.png").stat().st_size > 1000
    assert "aligned barrier" in path.read_text() and "width 2" in path.read_text()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").rglob("*.pt")}
    run_study.main([*args, "--widths", "2", "4", "8", "--width-epochs", "8=2"])  # width 8 trained longer
    ran = ran_steps(capsys)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # widths 2 and 4: nothing retrained or refitted
    assert {p.relative_to(tmp_path / "sweep").parts[0] for p in (tmp_path / "sweep").rglob("*.pt")} == {"width2", "width4", "width8"}
    assert len(ran) == 2 + 1 + 1 + 1 + 1  # width 8's endpoints, curve, evaluations by both matchers, figures: nothing else
    rows = width_table((tmp_path / "sweep" / "report.md").read_text(), "mse")
    assert [(r[0], r[2]) for r in rows] == [("2", "1"), ("4", "1"), ("8", "2")]
    assert {json.loads(p.read_text())["config"]["epochs"] for p in (tmp_path / "sweep" / "width8" / "ae").glob("*.json")} == {2}
    again = report_module.main(["--study", str(tmp_path / "sweep"), "--out", str(tmp_path / "again.md")])  # report.py on a sweep
    assert again.read_text() == (tmp_path / "sweep" / "report.md").read_text().replace("](", "](sweep/")  # links from its folder
    sweep = tmp_path / "sweep"
    mixed = report_module.main(["--study", str(tmp_path / "mixed"), "--widths-from", str(sweep / "width8"), str(sweep / "width2")])
    assert [(r[0], r[2]) for r in width_table(mixed.read_text(), "mse")] == [("2", "1"), ("8", "2")]
    assert [r[4:] for r in width_table(mixed.read_text(), "mse")] == [r[4:] for r in rows if r[0] in ("2", "8")]
    assert (tmp_path / "mixed" / "figures" / "widths_mse.png").is_file()
    for bad, why in (([sweep / "width2", sweep / "width2"], "two studies of width 2"), ([sweep], "holds no study.json")):
        with pytest.raises(UserError, match=why):
            report_module.main(["--study", str(tmp_path / "bad"), "--widths-from", *map(str, bad)])
    for bad in (["--widths", "2", "2"], ["--widths", "2", "4", "--width", "8"]):
        with pytest.raises(UserError, match="give each width once, and no --width beside it"):
            run_study.main([*args, *bad])
    for bad, why in ((["--widths", "2", "--width-epochs", "4=2"], "names width 4, which is not in --widths"),
                     (["--width-epochs", "4=2"], "names width 4, which is not in --widths"),
                     (["--widths", "2", "--width-epochs", "2=2", "2=3"], "names a width twice")):
        with pytest.raises(UserError, match=why):
            run_study.main([*args, *bad])
    for bad in ("8", "8=0", "8=x"):
        with pytest.raises(SystemExit):
            run_study.parse_args(["--widths", "8", "--width-epochs", bad])
    assert "is not W=E" in capsys.readouterr().err


def test_full_preset_without_celeba_root_is_refused():
    with pytest.raises(run_study.UserError, match="--data-root"):
        run_study.main(["--preset", "full"])


def test_quick_preset_spends_its_budget_per_group():
    """Settings given per loss group reach each group's steps; the quick preset gives MSE more epochs and ensembles."""
    settings = run_study.resolve_settings(run_study.parse_args([]))
    steps = run_study.plan(settings, Path("study"), "random")
    def flag(step, name):
        return step["argv"][step["argv"].index(name) + 1]
    train = {s["name"]: s for s in steps if s["kind"] == "train"}
    fits = [s for s in steps if s["kind"] == "fit"]
    assert int(flag(train["train mse seed 0"], "--epochs")) > int(flag(train["train perceptual seed 0"], "--epochs"))
    assert {flag(s, "--batch-size") for s in fits if "perceptual" in s["name"]} == {"16"}
    assert [s["name"] for s in steps if s["kind"] == "ensemble"] == ["ensembles mse bezier"]
    overridden = run_study.plan(run_study.resolve_settings(run_study.parse_args(["--epochs", "3", "--batch-size", "8"])),
                                Path("study"), "random")
    assert {flag(s, "--epochs") for s in overridden if s["kind"] == "train"} == {"3"}
    assert {flag(s, "--batch-size") for s in overridden if s["kind"] in ("train", "fit")} == {"8"}


def test_the_quick_preset_gives_the_anchors_500_training_images_never_more_than_training_had():
    """eval_curve.py --n-train caps the population its anchors (and its train loss) see; the endpoints train on all."""
    def population(argv):
        steps = run_study.plan(run_study.resolve_settings(run_study.parse_args(argv)), Path("study"), "random")
        kinds = {s["kind"]: s for s in steps}
        cap = lambda step: step["argv"][step["argv"].index("--n-train") + 1] if "--n-train" in step["argv"] else None  # noqa: E731
        return {kind: {cap(s) for s in steps if s["kind"] == kind} for kind in kinds if kind in ("train", "fit", "eval")}
    assert population([]) == {"train": {None}, "fit": {None}, "eval": {"500"}}
    assert population(["--n-train", "300"]) == {"train": {"300"}, "fit": {None}, "eval": {"300"}}  # within what training saw
    assert population(["--anchor-images", "1200"])["eval"] == {"1200"}
    full = run_study.resolve_settings(run_study.parse_args(["--preset", "full", "--data-root", "celeba"]))
    assert "--n-train" not in next(s for s in run_study.plan(full, Path("study"), "random") if s["kind"] == "eval")["argv"]


def test_plane_step_for_the_first_pair_of_each_group_unless_no_plane():
    """The plane (Figure 1) of each group's first curve, its grid per group, drawn by the plot step; --no-plane drops it."""
    settings = run_study.resolve_settings(run_study.parse_args(["--seeds", "0", "1", "2", "--curve", "both"]))
    steps = run_study.plan(settings, Path("study"), "random")
    planes = [s for s in steps if s["kind"] == "plane"]
    assert [s["name"] for s in planes] == [f"plane {loss} {curve} seeds 0-1" for loss in ("mse", "perceptual")
                                           for curve in ("bezier", "polychain")]
    assert [s["argv"][s["argv"].index("--grid") + 1] for s in planes] == ["9", "9", "5", "5"]  # the quick preset's grids
    plot_step = steps[-1]
    assert all(str(s["output"]) in plot_step["argv"] and s["output"] in plot_step["inputs"] for s in planes)
    for flags in (["--no-plane"], ["--num-bends", "4"]):  # skipped, or no plane to span
        settings = run_study.resolve_settings(run_study.parse_args(flags))
        assert not [s for s in run_study.plan(settings, Path("study"), "random") if s["kind"] == "plane"]
    full = run_study.resolve_settings(run_study.parse_args(["--preset", "full", "--data-root", "x"]))
    assert {s["argv"][s["argv"].index("--grid") + 1] for s in run_study.plan(full, Path("study"), "random") if s["kind"] == "plane"} == {"21"}


def test_the_aligned_segment_is_evaluated_per_group_as_the_preset_or_flag_says():
    def aligned(argv):
        steps = run_study.plan(run_study.resolve_settings(run_study.parse_args(argv)), Path("study"), "random")
        evals = [s for s in steps if s["kind"] == "eval"]
        assert len(evals) == 6
        return {s["name"].split()[1] for s in evals if "--aligned" in s["argv"]}

    assert aligned([]) == {"mse"}  # quick: the perceptual evaluation is the slow part
    assert aligned(["--preset", "full", "--data-root", "celeba"]) == {"mse", "perceptual"}
    assert aligned(["--no-aligned"]) == set() and aligned(["--aligned"]) == {"mse", "perceptual"}
    assert aligned(["--preset", "full", "--data-root", "celeba", "--no-aligned"]) == set()


def test_aligned_curves_are_a_second_fit_compared_in_the_report_not_a_pair_of_the_verdict(tmp_path):
    args = [*MICRO, "--losses", "mse", "--aligned-curves", "--no-arclength", "--no-plane", "--no-ensembles", "--no-simplex",
            "--out", str(tmp_path / "study"), "--cache-dir", str(tmp_path / "cache")]
    steps = run_study.plan(run_study.resolve_settings(run_study.parse_args(args)), tmp_path / "study", "random")
    fit, evaluation = [s for s in steps if "aligned to A" in s["name"]]
    assert "--aligned" in fit["argv"] and fit["output"].name == "mse_s0-s1-bezier-aligned.pt" and evaluation["kind"] == "eval-aligned_curves"
    assert not [s for s in run_study.plan(run_study.resolve_settings(run_study.parse_args(MICRO)), tmp_path, "random")
                if "aligned to A" in s["name"]]  # off in the quick preset
    text = run_study.main(args).read_text()
    assert "Evidence: 1 pair(s) in all" in text  # the aligned fit is not counted as a second pair
    section = text[text.index("## Aligned curves"):text.index("## Answer")]
    assert "| mse | seeds 0–1 | A and B |" in section and "| mse | seeds 0–1 | A and aligned B |" in section
    aligned = json.loads((tmp_path / "study/curves/mse_s0-s1-bezier-aligned.eval.json").read_text())
    plain = json.loads((tmp_path / "study/curves/mse_s0-s1-bezier.eval.json").read_text())
    assert aligned["aligned_curve"] and not plain["aligned_curve"]
    # the aligned B computes B's function: the two curves end on the same loss, through different weights
    assert aligned["paths"]["curve"]["test_mse"][-1] == pytest.approx(plain["paths"]["curve"]["test_mse"][-1], rel=1e-4)


def test_groups_with_denoising_and_sparse_variants_get_a_section_and_verdict_each(tmp_path):
    common = ["--no-simplex", "--no-plane", "--no-ensembles", "--no-function-space", "--no-arclength", "--no-aligned",
              "--out", str(tmp_path / "study"), "--cache-dir", str(tmp_path / "cache")]
    args, plain = [*MICRO, "--groups", "mse", "mse+noise=0.1", "mse+l1=1e-3", *common], [*MICRO, "--losses", "mse", *common]
    plan = lambda argv: run_study.plan(run_study.resolve_settings(run_study.parse_args(argv)), tmp_path / "study", "random")  # noqa: E731
    train = {s["name"]: s["argv"] for s in plan(args) if s["kind"] == "train"}
    assert train["train mse seed 0"] == next(s["argv"] for s in plan(plain) if s["name"] == "train mse seed 0")  # plain keys unchanged
    assert train["train mse+l1=0.001 seed 1"][:4] == ["--loss", "mse", "--l1", "0.001"]
    assert train["train mse+noise=0.1 seed 0"][train["train mse+noise=0.1 seed 0"].index("--epochs") + 1] == "1"  # the base loss's setting
    text = run_study.main(args).read_text()
    assert (tmp_path / "study/ae/mse+noise=0.1_s0.pt").is_file() and (tmp_path / "study/curves/mse+l1=0.001_s0-s1-bezier.eval.json").is_file()
    for group in ("mse", "mse+noise=0.1", "mse+l1=0.001"):
        assert f"**{group} group — " in text and f"| {group} | seeds 0–1 |" in text and f"Figure 2: {group}, bezier" in text
    comparison = next(line for line in text.splitlines() if "mean (worst) relative test barrier of the straight segments" in line)
    assert all(group in comparison for group in ("mse+noise=0.1", "mse+l1=0.001"))
    with pytest.raises(UserError, match="give one of them"):
        run_study.resolve_settings(run_study.parse_args([*MICRO, "--groups", "mse", "--losses", "mse"]))
