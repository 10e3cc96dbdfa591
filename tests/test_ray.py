"""Tests of run_study.py's executors: the step graph, and the Ray executor (a local 2-CPU Ray instance)
against the local one, a failing step, and Ray missing; and which steps the Ray executor has in flight at
once (on a recording stand-in for Ray, with steps that do nothing)."""
import json
import re
import sys
from pathlib import Path

import pytest

from lib import cli
from lib import executors
import run_study
from lib.files import UserError

# 1 epoch, a width-4 autoencoder, a few images, the mse group only: trainings, fits, evaluations (with the
# aligned segment and the probes), figures and report; one thread per step, so both executors compute alike
TINY = ["--synthetic-size", "48", "--n-test", "20", "--width", "4", "--latent-dim", "8", "--batch-size", "16",
        "--epochs", "1", "--curve-epochs", "1", "--seeds", "0", "1", "--num-points", "3", "--bn-images", "16", "--train-images", "16",
        "--test-images", "8", "--vgg-weights", "random", "--device", "cpu", "--losses", "mse", "--no-plane",
        "--no-ensembles", "--no-function-space", "--no-arclength", "--no-simplex", "--threads-per-step", "1"]
RAY = ["--executor", "ray"]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance of 2 CPUs for this module's Ray runs: run_study uses the Ray already running
    in its process (as it would a notebook's) rather than starting one per run, which takes seconds."""
    ray = pytest.importorskip("ray")
    executors.start_ray(ray, cpus=2)
    yield
    ray.shutdown()


def run_in(folder: Path, monkeypatch, *args: str) -> Path:
    """run_study.main from inside `folder`, on relative paths (checkpoints record their endpoints' paths,
    so two studies can match byte for byte only at the same relative path); the report's full path."""
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    return folder / run_study.main([*TINY, "--out", "study", "--cache-dir", "../cache", *args])


def finished(capsys) -> list[str]:
    """Names of the steps the last parallel run finished, from its console lines."""
    return re.findall(r"^\[\d+/\d+\] (.+?)  \(elapsed .*, took ", capsys.readouterr().out, flags=re.M)


def test_the_step_graph_comes_from_each_steps_inputs_and_output():
    settings = run_study.resolve_settings(run_study.parse_args(["--seeds", "0", "1", "2"]))
    steps = run_study.plan(settings, Path("study"), "random")
    needs = run_study.dependencies(steps)
    by_name = {s["name"]: n for n, s in enumerate(steps)}
    names = lambda indices: sorted(steps[n]["name"] for n in indices)  # noqa: E731
    assert names(needs[by_name["train mse seed 0"]]) == []
    assert names(needs[by_name["fit mse bezier seeds 0-2"]]) == ["train mse seed 0", "train mse seed 2"]
    assert names(needs[by_name["eval mse bezier seeds 1-2"]]) == ["fit mse bezier seeds 1-2"]
    assert names(needs[by_name["ensembles mse bezier"]]) == ["fit mse bezier seeds 0-1", *(f"train mse seed {s}" for s in range(3))]
    assert "ensembles mse bezier" in names(needs[by_name["function space mse"]])
    plot = needs[by_name["plot figures"]]
    assert names(plot) == names(n for n, s in enumerate(steps) if s["kind"] in ("eval", "plane"))  # not the variants' evaluations
    assert all(m < n for n, deps in enumerate(needs) for m in deps)  # the plan lists a step after what it needs


def test_ray_flags_without_ray_executor_are_refused():
    with pytest.raises(UserError, match="are for --executor ray"):
        run_study.main([*TINY, "--ray-address", "auto"])
    with pytest.raises(UserError, match="--ray-cpus sizes the local Ray instance"):
        run_study.main([*TINY, "--executor", "ray", "--ray-address", "auto", "--ray-cpus", "2"])


def test_ray_executor_without_ray_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    with pytest.raises(SystemExit) as exit_:
        cli.run(run_study.main, [*TINY, "--executor", "ray", "--out", str(tmp_path / "study"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "--executor ray needs Ray, which is not installed: pip install -r requirements-ray.txt" in err
    assert not (tmp_path / "study").exists() and not (tmp_path / "cache").exists()  # refused before any data or folder


def test_ray_executor_gives_the_local_executors_checkpoints_and_report(ray_instance, tmp_path, monkeypatch, capsys):
    local = run_in(tmp_path / "local", monkeypatch)
    capsys.readouterr()
    ray = run_in(tmp_path / "ray", monkeypatch, *RAY)
    assert sorted(finished(capsys)) == sorted(["train mse seed 0", "train mse seed 1", "fit mse bezier seeds 0-1",
                                               "eval mse bezier seeds 0-1", "plot figures"])
    checkpoints = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local/study").rglob("*.pt"))
    assert len(checkpoints) == 5  # 2 endpoints, their snapshot at the end of epoch 1, the curve
    assert checkpoints == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray/study").rglob("*.pt"))
    for path in checkpoints:
        assert (tmp_path / "local" / path).read_bytes() == (tmp_path / "ray" / path).read_bytes(), path
    assert local.read_text().split("## Endpoints")[1] == ray.read_text().split("## Endpoints")[1]  # every number after the set-up
    assert "they ran in parallel on Ray, and the study took" in ray.read_text()
    record = json.loads((tmp_path / "ray/study/study.json").read_text())
    assert record["executor"] == "ray" and record["threads_per_step"] == 1
    assert [s["kind"] for s in record["steps"]] == ["train", "train", "fit", "eval", "plot"]  # in plan order
    assert set(record["done"]) == {s["output"] for s in record["steps"]}


def test_a_failing_ray_step_stops_only_its_dependants_and_a_rerun_completes_the_rest(ray_instance, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "study/ae/mse_s2.pt"
    blocker.mkdir(parents=True)  # a folder where seed 2's checkpoint goes: its training fails as it writes it
    with pytest.raises(UserError) as error:
        run_in(tmp_path, monkeypatch, "--seeds", "0", "1", "2", *RAY)
    assert re.fullmatch(r"1 step\(s\) failed \('train mse seed 2': could not write study/ae/mse_s2\.pt: .*\) and the 5 step\(s\) "
                        r"that depend on them were not run; finished steps are kept, fix the cause and rerun the same command to continue",
                        str(error.value))
    out = capsys.readouterr().out
    assert re.search(r"^\[\d/10\] train mse seed 2: FAILED: could not write study/ae/mse_s2\.pt", out, flags=re.M)
    dependants = ["fit mse bezier seeds 0-2", "fit mse bezier seeds 1-2", "eval mse bezier seeds 0-2", "eval mse bezier seeds 1-2", "plot figures"]
    for name in dependants:
        assert re.search(rf"^\[\d+/10\] {name}: not run: depends on failed step 'train mse seed 2'$", out, flags=re.M)
    independent = ["train mse seed 0", "train mse seed 1", "fit mse bezier seeds 0-1", "eval mse bezier seeds 0-1"]
    assert sorted(re.findall(r"^\[\d+/10\] (.+?)  \(elapsed .*, took ", out, flags=re.M)) == sorted(independent)
    record = json.loads((tmp_path / "study/study.json").read_text())
    assert sorted(s["name"] for s in record["steps"] if not s.get("failed")) == sorted(independent)
    assert (tmp_path / "study/curves/mse_s0-s1-bezier.eval.json").is_file() and not (tmp_path / "study/report.md").exists()

    blocker.rmdir()  # the cause fixed, the same command again
    report = run_in(tmp_path, monkeypatch, "--seeds", "0", "1", "2", *RAY)
    out = capsys.readouterr().out
    assert sorted(re.findall(r"^\[\d+/10\] (.+?)  \(elapsed .*, took ", out, flags=re.M)) == sorted(["train mse seed 2", *dependants])
    assert sorted(re.findall(r"^\[\d+/10\] (.+?): up to date, skipped", out, flags=re.M)) == sorted(independent)
    assert report.is_file() and "Evidence: 3 pair(s) in all" in report.read_text()


class RecordingRay:
    """Just enough of the `ray` module for executors.RayPool, with no Ray and no timing: a task runs when it is
    got, and ray.wait hands back the task submitted last (the reverse of the plan's order); every submission and
    every wait is recorded with the steps in flight at that moment."""

    class exceptions:  # noqa: N801  (ray.exceptions)
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            pass

    class Ref:  # an object reference: hashable, by identity
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

    def __init__(self, cpus: int):
        self.cpus, self.in_flight, self.events = cpus, [], []

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": self.cpus}}]

    def cluster_resources(self):
        return {"CPU": self.cpus}

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **_):
                return self

            def remote(self, script, argv, *rest):
                ref = RecordingRay.Ref(fn, (script, argv, *rest))
                ray.in_flight.append(ref)
                ray.events.append(("submit", argv))
                return ref

        return Task()

    def wait(self, refs, num_returns):
        assert num_returns == 1 and set(map(id, refs)) == set(map(id, self.in_flight))
        self.events.append(("wait", [ref.args[1] for ref in self.in_flight]))
        ref = self.in_flight.pop()
        return [ref], list(self.in_flight)

    def get(self, ref):
        return ref.fn(*ref.args)


def test_the_ray_executor_submits_every_ready_step_at_once_and_none_before_its_inputs_exist(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(executors, "run_step", lambda script, argv, threads, cwd: ran.append(argv) or 0.0)  # a step that does nothing
    settings = run_study.resolve_settings(run_study.parse_args(["--seeds", "0", "1", "2", "--precision", "fp32"]))  # mse, perceptual: every kind
    steps = run_study.plan(settings, tmp_path / "study", "random")
    name_of = {tuple(s["argv"]): s["name"] for s in steps}
    assert len(name_of) == len(steps)  # a submission names its step by its argv
    made_by = {str(s["output"]): s["name"] for s in steps}  # what each step needs, read here from inputs and outputs
    needs = {s["name"]: {made_by[str(p)] for p in s["inputs"] if str(p) in made_by} for s in steps}
    ray = RecordingRay(cpus=4)
    pool = executors.RayPool(ray, threads=1, cuda=False)
    assert not pool.serial and pool.slots == 4
    record = {"steps": [], "done": {}}
    run_study.run_steps(steps, record, tmp_path / "study.json", pool)

    assert sorted(map(tuple, ran)) == sorted(name_of)  # every step ran once
    assert [e["name"] for e in record["steps"] if not e["skipped"]] == [s["name"] for s in steps]
    finished, submitted, waits = set(), [], []
    for kind, what in ray.events:
        if kind == "submit":
            name = name_of[tuple(what)]
            assert needs[name] <= finished, f"{name} submitted before {sorted(needs[name] - finished)} finished"
            submitted.append(name)
        else:
            in_flight = {name_of[tuple(argv)] for argv in what}
            ready = {s["name"] for s in steps if s["name"] not in submitted and needs[s["name"]] <= finished}
            assert not ready, f"waited with {sorted(ready)} ready but not submitted"
            waits.append(in_flight)
            finished.add(name_of[tuple(what[-1])])  # the one RecordingRay.wait hands back
    trainings = {f"train {loss} seed {seed}" for loss in ("mse", "perceptual") for seed in (0, 1, 2)}
    assert waits[0] == trainings == {name for name, deps in needs.items() if not deps}  # all in flight before any is waited for
    # and later: a group's fit as soon as its two endpoints are there, while the other group still trains
    assert any("fit perceptual bezier seeds 1-2" in w and "train mse seed 0" in w for w in waits)
    assert submitted[-1] == "plot figures" and len(submitted) == len(steps)
