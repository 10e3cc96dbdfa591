"""The copy test: ae.py and curves.py import nothing of the project, and a bare copy of exactly the files the card's
chain imports at module level runs train_ae.py, fit_curve.py, eval_curve.py and plot.py on the default data; an
optional flag whose module the copy lacks stops with one line naming the file."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAIN = ["train_ae.py", "fit_curve.py", "eval_curve.py", "plot.py"]
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}  # nothing of the repository on the path


def project_imports(path: Path) -> set[Path]:
    """The project files `path` imports at module level (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            file = ROOT / (name.replace(".", "/") + ".py")
            if file.is_file():
                found.add(file)
    return found


def closure(scripts: list[str]) -> set[Path]:
    todo, seen = [ROOT / s for s in scripts], set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(project_imports(path))
    return seen


def test_the_core_modules_copy_alone():
    assert project_imports(ROOT / "ae.py") == set()
    assert project_imports(ROOT / "curves.py") == set()


def test_a_bare_copy_of_the_card_chain_runs_on_the_default_data(tmp_path):
    files = closure(CHAIN)
    assert len(files) <= 10 and sum(len(p.read_text().splitlines()) for p in files) <= 2800
    for path in files:
        (tmp_path / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / path.relative_to(ROOT))
    assert not (tmp_path / "lib" / "align.py").exists()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)

    data = ["--synthetic-size", "48", "--n-test", "16", "--cache-dir", "cache"]
    for seed in ("0", "1"):
        done = run("train_ae.py", "--loss", "mse", "--seed", seed, "--width", "4", "--latent-dim", "8", "--epochs", "1",
                   "--batch-size", "16", *data)
        assert done.returncode == 0, done.stderr
    a, b = "runs/ae/mse_s0.pt", "runs/ae/mse_s1.pt"
    done = run("fit_curve.py", "--a", a, "--b", b, "--curve", "bezier", "--epochs", "1", "--batch-size", "16", "--bn-images", "16")
    assert done.returncode == 0, done.stderr
    done = run("eval_curve.py", "--num_points", "3", "--bn-images", "16", "--train-images", "16", "--test-images", "16")
    assert done.returncode == 0, done.stderr
    done = run("plot.py")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs/figures/fig2_mse_bezier.png").is_file()

    missing = run("eval_curve.py", "--num_points", "3", "--aligned", "--out", "runs/aligned.eval.json")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0, missing.stderr
    assert "--aligned needs lib/align.py" in missing.stderr
    assert not (tmp_path / "runs/aligned.eval.json").exists()


def test_without_lib_vgg_the_mse_chain_runs_and_the_perceptual_loss_names_the_file(monkeypatch, tmp_path):
    # in process, lib/vgg.py made unimportable (a bare copy has no lib/vgg.py: the subprocess test above runs without it)
    import pytest
    import train_ae
    from lib import training
    from lib.files import UserError

    monkeypatch.setitem(sys.modules, "lib.vgg", None)
    assert training.resolve_precision("auto", training.torch.device("cpu"), "mse") == "fp32"
    with pytest.raises(UserError, match=r"--loss perceptual needs lib/vgg\.py"):
        train_ae.main(["--loss", "perceptual", "--vgg-weights", "random", "--out", str(tmp_path / "p.pt"),
                       "--synthetic-size", "16", "--n-test", "8", "--cache-dir", str(tmp_path / "cache")])
    assert not (tmp_path / "p.pt").exists()
