"""Reliability and bad input (issue 7): atomic writes under SIGKILL and a full disk, resume, safe
loading, checked inputs with one-line errors, divergence, determinism, and a fuzz of the loaders.

Everything runs with one intra-op thread, as the subprocesses do (OMP_NUM_THREADS=1): CPU results
are bit-identical only at equal thread counts.
"""
import ast
import errno
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import ae
import data
import eval_curve
from lib import files, vgg
import fit_curve
import plot
import train_ae
from lib import training
from conftest import tiny_args
from lib.files import AE_FORMAT, CURVE_FORMAT, CheckpointError, UserError, load_checkpoint, save_ae, save_checkpoint

HERE = Path(__file__).resolve().parent.parent  # the repository root, where the scripts are
EPOCHS = 8
RESUME = files.RESUME_FORMAT
FIT_FLAGS = ["--epochs", "2", "--batch-size", "32", "--bn-images", "16", "--eval-batch-size", "64", "--lr", "3e-3"]
EVAL_FLAGS = ["--num_points", "3", "--columns", "2", "--images", "2", "--bn-images", "16", "--train-images", "16",
              "--test-images", "8", "--eval-batch-size", "64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here, as in the subprocesses (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recording_replace(monkeypatch) -> list[Path]:
    """Record every os.replace destination: the files that were renamed into place."""
    replaced, real = [], os.replace

    def replace(src, dst, *args, **kwargs):
        replaced.append(Path(dst).resolve())
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return replaced


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-epoch run: its flags (all but --out), its checkpoint, and the files renamed into place."""
    tmp = tmp_path_factory.mktemp("reference")
    # fp32 by name: the runs in subprocesses would otherwise time bf16 for themselves (conftest pins it in this one)
    flags = ["--seed", "3", "--precision", "fp32", *tiny_args(tmp, **{"--epochs": EPOCHS})]
    out = tmp / "ref" / "a.pt"
    with pytest.MonkeyPatch.context() as mp:
        replaced = recording_replace(mp)
        train_ae.main([*flags, "--out", str(out)])
    return flags, out, replaced


@pytest.fixture(scope="module")
def fitted(endpoints, tmp_path_factory):
    """A 2-epoch Bezier fit between copies of the session's endpoints: its flags, its checkpoint, the files renamed into place."""
    tmp = tmp_path_factory.mktemp("fit")
    copies = [tmp / "a.pt", tmp / "b.pt"]
    for src, dst in zip(endpoints, copies):
        dst.write_bytes(src.read_bytes())
    flags = ["--a", str(copies[0]), "--b", str(copies[1]), *FIT_FLAGS]
    out = tmp / "curve" / "c.pt"
    with pytest.MonkeyPatch.context() as mp:
        replaced = recording_replace(mp)
        fit_curve.main([*flags, "--out", str(out)])
    return flags, out, replaced


def weights(path: Path, kind: str = AE_FORMAT) -> dict:
    return load_checkpoint(path, kind)["state_dict"]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def check_every_file_is_whole(folder: Path) -> None:
    """Every checkpoint under `folder` loads with its format, every JSON parses and every PNG decodes
    (left-over temporary files of a killed write are allowed: they are never read)."""
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".pt":
            kind = RESUME if path.name.endswith(".resume.pt") else data.CACHE_KIND if path.parent.name == "cache" else AE_FORMAT
            load_checkpoint(path, kind)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            with Image.open(path) as png:
                png.verify()


# ---------------------------------------------------------------- 1, 2. atomic writes and resume under SIGKILL

# Runs train_ae.py, but SIGKILLs itself in the middle of the nth write of the file named argv[1]:
# half the bytes are in the temporary file, nothing has been renamed yet.
KILL_MID_WRITE = """
import io, os, signal, sys
from pathlib import Path
from lib import files
target, nth = sys.argv.pop(1), int(sys.argv.pop(1))
real_write, seen = files.atomic_write, []

def atomic_write(path, write, binary=True):
    if Path(path).name == target:
        seen.append(path)
        if len(seen) == nth:
            def dying(f):
                buf = io.BytesIO()
                write(buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(path, dying, binary)
    return real_write(path, write, binary)

files.atomic_write = atomic_write
import train_ae
from lib import cli
cli.run(train_ae.main)
"""


def start(tmp: Path, args: list[str], log: str) -> subprocess.Popen:
    """A subprocess in `tmp` with one thread, its output in log files (read them when a test fails)."""
    with open(tmp / f"{log}.out", "w") as out, open(tmp / f"{log}.err", "w") as err:
        return subprocess.Popen([sys.executable, *args], cwd=tmp, env=ENV, stdout=out, stderr=err)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_at_any_moment_leaves_whole_files_and_resume_matches_an_uninterrupted_run(reference, tmp_path):
    flags, ref_out, _ = reference
    expected = weights(ref_out)
    run, other = tmp_path / "run", tmp_path / "other"
    out, resume = run / "a.pt", run / "a.resume.pt"

    # Two runs at once: one killed as soon as its first resume state appears, one at an arbitrary moment
    # (start-up takes seconds, so this may fall before, during or after training).
    first = start(tmp_path, [str(HERE / "train_ae.py"), *flags, "--out", str(out)], "first")
    arbitrary = start(tmp_path, [str(HERE / "train_ae.py"), *flags, "--out", str(other / "a.pt")], "arbitrary")
    deadline = time.monotonic() + random.Random(7).uniform(2.0, 7.0)
    while first.poll() is None or arbitrary.poll() is None:
        if first.poll() is None and resume.exists():
            first.kill()
        if arbitrary.poll() is None and time.monotonic() > deadline:
            arbitrary.kill()
        time.sleep(0.002)
    assert first.wait() == -signal.SIGKILL, (tmp_path / "first.err").read_text()
    check_every_file_is_whole(run)
    assert not out.exists()
    done = load_checkpoint(resume, RESUME)["epoch"]
    assert done <= EPOCHS - 4  # room for the next two kills

    # Killed halfway through writing the resume state of the second epoch it trains: the one before stays.
    killed = start(tmp_path, ["-c", KILL_MID_WRITE, "a.resume.pt", "2", *flags, "--out", str(out), "--resume"], "mid_resume")
    assert killed.wait() == -signal.SIGKILL, (tmp_path / "mid_resume.err").read_text()
    assert load_checkpoint(resume, RESUME)["epoch"] == done + 1
    assert list(run.glob(".a.resume.pt.*.tmp"))  # the half-written temporary file: the kill did fall mid-write
    check_every_file_is_whole(run)

    # Killed halfway through writing the final checkpoint: the previous file of that name is intact.
    save_ae(out, ae.AutoEncoder(8, 4), {"previous": True}, {})
    previous = out.read_bytes()
    killed = start(tmp_path, ["-c", KILL_MID_WRITE, "a.pt", "1", *flags, "--out", str(out), "--resume"], "mid_final")
    assert killed.wait() == -signal.SIGKILL, (tmp_path / "mid_final.err").read_text()
    assert out.read_bytes() == previous
    assert load_checkpoint(resume, RESUME)["epoch"] == EPOCHS - 1
    check_every_file_is_whole(run)

    # --resume finishes both runs with exactly the weights of the uninterrupted one.
    train_ae.main([*flags, "--out", str(out), "--resume"])
    assert_same_tensors(weights(out), expected)
    assert not resume.exists()
    assert arbitrary.returncode in (0, -signal.SIGKILL), (tmp_path / "arbitrary.err").read_text()
    check_every_file_is_whole(other)
    train_ae.main([*flags, "--out", str(other / "a.pt"), "--resume"])
    assert_same_tensors(weights(other / "a.pt"), expected)


def test_every_output_is_renamed_into_place(reference, fitted, tmp_path, monkeypatch):
    _, ref_out, replaced = reference
    assert set(files_under(ref_out.parent)) == {"a.json", "a.png", "a.pt"}
    assert {(ref_out.parent / name).resolve() for name in files_under(ref_out.parent)} <= set(replaced)
    _, curve, replaced = fitted
    assert curve.resolve() in replaced
    replaced = recording_replace(monkeypatch)
    result = eval_curve.main(["--ckpt", str(curve), *EVAL_FLAGS, "--save-t", "0.5", "--out", str(tmp_path / "e" / "c.eval.json")])
    written = plot.main([str(tmp_path / "e" / "c.eval.json"), "--out", str(tmp_path / "fig")])
    assert len(result["files"]["points"]) == 1 and len(written) == 5
    outputs = [p.resolve() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(outputs) >= 10  # json, npz, 2 grids, 1 point; 4 figures and a GIF
    assert set(outputs) <= set(replaced)
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"previous")

    def fails(f):
        f.write(b"half of the new ")
        raise ValueError("figure could not be drawn")

    with pytest.raises(ValueError, match="figure"):
        files.atomic_write(path, fails)
    assert path.read_bytes() == b"previous" and files_under(tmp_path) == ["x.pt"]


def test_the_next_write_removes_temporary_files_of_killed_writes_but_not_fresh_ones(tmp_path):
    old = time.time() - files.STALE_TEMP_SECONDS - 60
    killed = [tmp_path / ".x.json.k1ll3d_a.tmp", tmp_path / ".y.pt.k1ll3d_b.tmp"]  # this target's and another's
    live = [tmp_path / ".x.json.l1v3_abc.tmp", tmp_path / ".y.pt.l1v3_abc.tmp"]  # perhaps being written right now
    elsewhere, not_ours = tmp_path / "sub" / ".x.json.k1ll3d_c.tmp", tmp_path / ".notes.tmp"
    for path in [*killed, *live, elsewhere, not_ours]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a file")
    for path in [*killed, elsewhere, not_ours]:
        os.utime(path, (old, old))
    files.write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert files_under(tmp_path) == sorted(str(p.relative_to(tmp_path)) for p in [*live, elsewhere, not_ours, tmp_path / "x.json"])

    def paused_for_hours(f):  # meanwhile another process cleans up: the write fails loudly, the file is kept
        f.write("{}")
        (temp,) = set(tmp_path.glob(".x.json.*.tmp")) - set(live)
        os.utime(temp, (old, old))
        files.remove_stale_temps(tmp_path)

    with pytest.raises(UserError, match="could not write .*x.json"):
        files.atomic_write(tmp_path / "x.json", paused_for_hours, binary=False)
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_atomic_write_gives_the_mode_a_plain_open_gives(tmp_path):
    # mkstemp creates its file 0600: without a chmod, every checkpoint and figure would be private
    files.atomic_write(tmp_path / "atomic.txt", lambda f: f.write("x"), binary=False)
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_fit_curve_resume_continues_exactly(fitted, tmp_path, monkeypatch):
    flags, ref_out, _ = fitted
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(Path(flags[1]).read_bytes()), b.write_bytes(Path(flags[3]).read_bytes())
    flags = ["--a", str(a), "--b", str(b), *flags[4:]]
    out, resume = tmp_path / "c.pt", tmp_path / "c.resume.pt"
    real = training.train_epoch

    def interrupt_after_step_1(step):
        if step == 0:
            raise KeyboardInterrupt

    def train_epoch(*args, **kwargs):  # Ctrl-C in the second epoch, right after its first step
        if kwargs["epoch"] == 1:
            kwargs["after_step"] = interrupt_after_step_1
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", train_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit_curve.main([*flags, "--out", str(out)])
    monkeypatch.undo()
    assert not out.exists() and load_checkpoint(resume, RESUME)["epoch"] == 0

    original = b.read_bytes()
    save_checkpoint(b, AE_FORMAT, {**{k: v for k, v in load_checkpoint(b, AE_FORMAT).items() if k != "format"},
                                   "metrics": {"retrained": True}})
    with pytest.raises(UserError, match=r"different settings \(endpoints\)"):
        fit_curve.main([*flags, "--out", str(out), "--resume"])
    b.write_bytes(original)
    fit_curve.main([*flags, "--out", str(out), "--resume"])
    assert_same_tensors(weights(out, CURVE_FORMAT), weights(ref_out, CURVE_FORMAT))
    assert not resume.exists()


def test_resume_restores_the_random_state(tmp_path):
    model = ae.AutoEncoder(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    torch.manual_seed(5)
    training.save_resume(tmp_path / "r.pt", model, optimizer, 0, [], {"seed": 5})
    expected = torch.rand(3)
    torch.manual_seed(6)
    assert training.load_resume(tmp_path / "r.pt", model, optimizer, {"seed": 5}) == (1, [])
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(UserError, match=r"different settings \(seed\)"):
        training.load_resume(tmp_path / "r.pt", model, optimizer, {"seed": 6})


# ---------------------------------------------------------------- 3. safe loading

class RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a pickle could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def armed(tmp_path: Path) -> tuple[Path, Path]:
    """A file with every key any loader wants, two of them objects whose unpickling runs code: (file, marker)."""
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    code = RunsCode(marker)
    torch.save({"format": AE_FORMAT, "state_dict": {}, "config": code, "metrics": {}, "model": {}, "optimizer": {},
                "epoch": 0, "history": [], "rng": torch.get_rng_state(), "images": code, "key": {}}, evil)
    return evil, marker


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    evil, marker = armed(tmp_path)
    model = ae.AutoEncoder(4, 2)
    attempts = {
        "load_checkpoint": lambda: load_checkpoint(evil, AE_FORMAT),
        "load_ae": lambda: files.load_ae(evil),
        "load_curve": lambda: files.load_curve(evil),
        "load_resume": lambda: training.load_resume(evil, model, torch.optim.Adam(model.parameters()), {}),
        "vgg16_features": lambda: vgg.vgg16_features(str(evil)),
    }
    for name, attempt in attempts.items():
        with pytest.raises(UserError) as err:
            attempt()
        assert "pickled Python objects" in str(err.value) or name == "vgg16_features", name
    config = data.data_config(type("Args", (), {})(), base={"synthetic_size": 8, "cache_dir": str(tmp_path / "cache")})
    images = data.load_split(config, "train", progress=False)
    (cache,) = (tmp_path / "cache").glob("*.pt")
    cache.write_bytes(evil.read_bytes())
    assert torch.equal(data.load_split(config, "train", progress=False), images)  # refused, so rebuilt
    assert "pickled Python objects" in capsys.readouterr().err
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file is armed: an unsafe load does run its code
    assert marker.is_dir()


def test_a_vgg_file_that_would_run_code_is_refused_clearly(tmp_path):
    evil, marker = armed(tmp_path)
    with pytest.raises(UserError, match=r"cannot read VGG16 weights from .*evil\.pt: it holds pickled Python objects"):
        vgg.vgg16_features(str(evil))


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def project_sources():
    return [p for p in sorted([*HERE.glob("*.py"), *HERE.glob("lib/*.py")]) if not p.name.startswith("test_") and p.name != "conftest.py"]


def test_every_load_is_weights_only():
    unsafe = []
    for path in project_sources():
        for node, name in calls(ast.parse(path.read_text())):
            keywords = {k.arg: k.value for k in node.keywords}
            safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
            if name in ("torch.load", "torch.hub.load_state_dict_from_url") and not safe \
                    or name in ("pickle.load", "pickle.loads") \
                    or name == "np.load" and "allow_pickle" in keywords and not (
                        isinstance(keywords["allow_pickle"], ast.Constant) and keywords["allow_pickle"].value is False):
                unsafe.append(f"{path.name}:{node.lineno} {name}")
    assert not unsafe


WRITER_METHODS = {"write_text", "write_bytes", "savefig", "save", "savez", "savez_compressed", "dump", "tofile", "to_csv"}
WRITER_FUNCTIONS = {"save_image", "shutil.copy", "shutil.copyfile", "shutil.copy2", "shutil.move"}


def writes_a_file(node: ast.Call, name: str) -> bool:
    if name in WRITER_FUNCTIONS or isinstance(node.func, ast.Attribute) and node.func.attr in WRITER_METHODS:
        return True
    if name != "open" and not name.endswith(".open"):
        return False
    mode = node.args[1 if name == "open" else 0] if len(node.args) > (name == "open") else \
        {k.arg: k.value for k in node.keywords}.get("mode")
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def test_every_output_is_written_through_atomic_write():
    # A writer may only run inside a function handed to files.atomic_write (which gives it the temporary
    # file), or inside a `with tempfile.TemporaryDirectory()` block (scratch files, not outputs).
    direct = []
    for path in project_sources():
        if path.name == "files.py":
            continue
        tree = ast.parse(path.read_text())
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "atomic_write":
                allowed.update(id(n) for arg in [*node.args, *(k.value for k in node.keywords)] for n in ast.walk(arg))
            if isinstance(node, ast.With) and any("TemporaryDirectory" in ast.unparse(item.context_expr) for item in node.items):
                allowed.update(id(n) for n in ast.walk(node))
        direct += [f"{path.name}:{node.lineno} {name}" for node, name in calls(tree)
                   if writes_a_file(node, name) and id(node) not in allowed]
    assert not direct


# ---------------------------------------------------------------- 4. checked inputs

def one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.strip().count("\n") == 0, run.stderr
    return run.stderr


def test_scripts_fail_with_one_line_and_no_outputs(endpoints, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(endpoints[0].read_bytes()[:1000])
    before = files_under(tmp_path)
    cases = {  # a flag out of range (argparse), and a damaged checkpoint (a UserError)
        "train_ae.py --epochs 0 --out out/a.pt": "argument --epochs: must be >= 1, got 0",
        f"fit_curve.py --a {truncated} --b {endpoints[1]} --out out/c.pt": "truncated",
    }
    runs = {command: subprocess.Popen([sys.executable, str(HERE / command.split()[0]), *command.split()[1:]], cwd=tmp_path,
                                      env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for command in cases}  # both at once: most of the time is start-up
    for command, message in cases.items():
        stdout, stderr = runs[command].communicate()
        assert message in one_line_error(subprocess.CompletedProcess(command, runs[command].returncode, stdout, stderr))
    assert files_under(tmp_path) == before


BAD_FLAGS = [
    ("train_ae", ["--epochs", "0"], "--epochs: must be >= 1"),
    ("train_ae", ["--batch-size", "0"], "--batch-size: must be >= 1"),
    ("train_ae", ["--lr", "0"], "--lr: must be a finite number > 0"),
    ("train_ae", ["--lr", "-0.001"], "--lr: must be a finite number > 0"),
    ("train_ae", ["--lr", "nan"], "--lr: must be a finite number > 0"),
    ("train_ae", ["--lr", "inf"], "--lr: must be a finite number > 0"),
    ("train_ae", ["--dataset", "imagenet"], "--dataset: invalid choice: 'imagenet'"),
    ("train_ae", ["--loss", "l1"], "--loss: invalid choice: 'l1'"),
    ("fit_curve", ["--num-bends", "1"], "--num-bends: must be >= 2"),
    ("fit_curve", ["--epochs", "0"], "--epochs: must be >= 1"),
    ("fit_curve", ["--batch-size", "-4"], "--batch-size: must be >= 1"),
    ("fit_curve", ["--lr", "0"], "--lr: must be a finite number > 0"),
    ("fit_curve", ["--wd", "-1"], "--wd: must be a finite number >= 0"),
    ("fit_curve", ["--dataset", "mnist"], "--dataset: invalid choice"),
    ("eval_curve", ["--num_points", "1"], "must be >= 2, got 1"),
    ("eval_curve", ["--num-points", "0"], "must be >= 2, got 0"),
    ("eval_curve", ["--save-t", "1.5"], "--save-t: t must be in [0, 1], got 1.5"),
    ("eval_curve", ["--save-t", "0.5", "-0.1"], "--save-t: t must be in [0, 1], got -0.1"),
    ("eval_curve", ["--save-t", "nan"], "--save-t: t must be in [0, 1]"),
]
SCRIPTS = {"train_ae": train_ae, "fit_curve": fit_curve, "eval_curve": eval_curve}


@pytest.mark.parametrize("script, argv, message", BAD_FLAGS, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD_FLAGS])
def test_flag_out_of_range_is_a_one_line_error(script, argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # tiny settings first (the bad flag overrides them): should the check go, the run stays short
    first = {"train_ae": tiny_args(tmp_path), "fit_curve": ["--a", "a.pt", "--b", "b.pt"], "eval_curve": []}[script]
    with pytest.raises(SystemExit) as exit_:
        SCRIPTS[script].main([*first, *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument ") and err.count("\n") == 1 and message in err and "--help" in err
    assert files_under(tmp_path) == []


def flip_a_bit_of_the_largest_tensor(blob: bytes) -> bytes:
    """`blob`, a torch.save zip, with one bit flipped in the middle of its largest record's data."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    name_length, extra_length = struct.unpack("<HH", blob[record.header_offset + 26: record.header_offset + 30])
    flipped = bytearray(blob)
    flipped[record.header_offset + 30 + name_length + extra_length + record.file_size // 2] ^= 0x10
    return bytes(flipped)


def damaged(kind: str, good: Path, other: Path, tmp: Path) -> Path:
    """A file standing where a checkpoint like `good` should be, damaged in the way `kind` names
    (`other` is a sound checkpoint of another kind)."""
    path = tmp / f"{kind}.pt"
    if kind == "missing":
        pass
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "bit-flipped":
        path.write_bytes(flip_a_bit_of_the_largest_tensor(good.read_bytes()))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "plain-tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "untagged":
        torch.save({k: v for k, v in torch.load(good, weights_only=True).items() if k != "format"}, path)
    elif kind == "wrong-tag":
        path.write_bytes(other.read_bytes())
    elif kind == "missing-keys":
        ckpt = torch.load(good, weights_only=True)
        save_checkpoint(path, ckpt["format"], {"state_dict": ckpt["state_dict"]})
    return path


CHECKPOINT_PROBLEMS = {
    "missing": r"does not exist; check the path",
    "empty": r"is empty .*; recreate it",
    "truncated": r"truncated, damaged or not a PyTorch file .*; recreate it",
    "bit-flipped": r"is damaged \(the checksum of .* does not match\); recreate it",
    "text": r"truncated, damaged or not a PyTorch file .*; recreate it",
    "folder": r"is a folder, not a file; pass the \.pt file",
    "plain-tensor": r"not a checkpoint of this toolkit \(no format tag\); expected a 'aemc-ae-v1' file",
    "untagged": r"not a checkpoint of this toolkit \(no format tag\); expected a 'aemc-ae-v1' file",
    "wrong-tag": r"is a 'aemc-curve-v1' file, but a 'aemc-ae-v1' checkpoint is needed",
    "missing-keys": r"lacks config, metrics; it is damaged or from another version",
}


@pytest.mark.parametrize("kind", CHECKPOINT_PROBLEMS)
def test_bad_endpoint_checkpoint_is_refused_before_any_output(kind, endpoints, fitted, tmp_path):
    _, curve, _ = fitted
    bad = damaged(kind, endpoints[0], curve, tmp_path)
    before = files_under(tmp_path)
    with pytest.raises(CheckpointError, match=CHECKPOINT_PROBLEMS[kind]):
        fit_curve.main(["--a", str(endpoints[0]), "--b", str(bad), "--out", str(tmp_path / "out" / "c.pt")])
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("kind", ["missing", "truncated", "wrong-tag", "missing-keys"])
def test_bad_curve_checkpoint_is_refused_before_any_output(kind, endpoints, fitted, tmp_path):
    _, curve, _ = fitted
    bad = damaged(kind, curve, endpoints[0], tmp_path)
    message = {"missing": "does not exist", "truncated": "truncated", "wrong-tag": "is a 'aemc-ae-v1' file, but a 'aemc-curve-v1'",
               "missing-keys": "lacks config"}[kind]
    before = files_under(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        eval_curve.main(["--ckpt", str(bad), *EVAL_FLAGS, "--out", str(tmp_path / "out" / "e.json")])
    assert files_under(tmp_path) == before


def test_damaged_resume_state_is_refused(reference, tmp_path):
    flags, _, _ = reference
    out = tmp_path / "a.pt"
    out.with_name("a.resume.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="a.resume.pt: it is truncated, damaged"):
        train_ae.main([*flags, "--out", str(out), "--resume"])
    assert not out.exists()


def relabelled(endpoint: Path, path: Path, **changes) -> Path:
    """A copy of `endpoint` whose config differs by `changes` (model keys go into config['model']);
    a different latent size or width gets weights of that shape."""
    ckpt = load_checkpoint(endpoint, AE_FORMAT)
    config = {**ckpt["config"], "model": dict(ckpt["config"]["model"])}
    for key, value in changes.items():
        (config["model"] if key in ("arch", "latent_dim", "width") else config)[key] = value
    model_config = config["model"] if config["model"]["arch"] == "conv-ae-v1" else ckpt["config"]["model"]
    save_ae(path, ae.build_model(model_config), config, ckpt["metrics"])
    return path


@pytest.mark.parametrize("change, message", [
    ({"latent_dim": 6}, "different latent dim (8 vs 6)"),
    ({"width": 6}, "different width (4 vs 6)"),
    ({"loss": "perceptual", "vgg_weights": "random"}, "different loss (mse vs perceptual)"),
    ({"arch": "resnet-ae"}, "unknown architecture 'resnet-ae'"),
])
def test_incompatible_endpoints_are_refused(change, message, endpoints, tmp_path):
    other = relabelled(endpoints[1], tmp_path / "other.pt", **change)
    with pytest.raises(UserError, match=re.escape(message)):
        fit_curve.main(["--a", str(endpoints[0]), "--b", str(other), "--out", str(tmp_path / "out" / "c.pt")])
    assert files_under(tmp_path) == ["other.pt"]


def test_perceptual_endpoints_with_different_vgg_weights_are_refused(endpoints, tmp_path):
    a = relabelled(endpoints[0], tmp_path / "a.pt", loss="perceptual", vgg_weights="random")
    b = relabelled(endpoints[1], tmp_path / "b.pt", loss="perceptual", vgg_weights="imagenet")
    with pytest.raises(UserError, match="different VGG16 weights"):
        fit_curve.main(["--a", str(a), "--b", str(b), "--out", str(tmp_path / "out" / "c.pt")])


def test_curve_whose_endpoint_changed_is_refused(fitted, tmp_path):
    _, curve, _ = fitted
    ckpt = load_checkpoint(curve, CURVE_FORMAT)
    copy = tmp_path / "b.pt"
    copy.write_bytes(Path(ckpt["config"]["endpoints"][1]["path"]).read_bytes())
    ckpt["config"]["endpoints"][1]["path"] = str(copy)
    moved = tmp_path / "c.pt"
    save_checkpoint(moved, CURVE_FORMAT, {k: v for k, v in ckpt.items() if k != "format"})
    files.load_curve(moved)  # unchanged: fine
    save_ae(copy, *files.load_ae(copy)[:1], ckpt["config"]["endpoints"][1]["config"], {"retrained": True})
    with pytest.raises(CheckpointError, match="endpoint .*b.pt changed since the curve .*c.pt was fitted; refit the curve"):
        files.load_curve(moved)


def write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(seed),
                                  dtype=torch.uint8).numpy()).save(path)


def test_bad_data_roots_are_refused_and_undecodable_images_counted(tmp_path, capsys):
    def train(root, dataset="folder"):
        return train_ae.main(["--dataset", dataset, "--data-root", str(root), "--out", str(tmp_path / "out" / "a.pt"),
                              *tiny_args(tmp_path)])

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(UserError, match="no images .* found under .*empty; point --data-root at a folder of images"):
        train(tmp_path / "empty")
    write_png(tmp_path / "celeba" / "celeba" / "img_align_celeba" / "000001.jpg", 0)
    with pytest.raises(UserError, match="no list_eval_partition.txt or .csv beside it"):
        train(tmp_path / "celeba", "celeba")
    for i in range(6):
        (tmp_path / "broken" / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "broken" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="none of the 5 image files .* could be decoded"):
        train(tmp_path / "broken")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []
    for i in range(20):
        write_png(tmp_path / "mixed" / f"{i}.png", i)
    (tmp_path / "mixed" / "3.png").write_bytes(b"truncated")
    train(tmp_path / "mixed")
    assert "skipped 1 of" in capsys.readouterr().err
    assert (tmp_path / "out" / "a.pt").exists()


def test_test_fraction_out_of_range_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError, match="--test-fraction must be between 0 and 1"):
        train_ae.main(["--dataset", "folder", "--data-root", str(tmp_path / "images"), "--test-fraction", "1.5",
                       "--out", str(tmp_path / "out" / "a.pt"), *tiny_args(tmp_path)])


def test_cuda_without_a_gpu_is_refused(fitted, tmp_path, monkeypatch):
    flags, curve, _ = fitted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for script, argv in ((train_ae, tiny_args(tmp_path)), (fit_curve, flags), (eval_curve, ["--ckpt", str(curve)])):
        with pytest.raises(UserError, match="--device cuda was given but no CUDA GPU is available; use --device cpu"):
            script.main([*argv, "--device", "cuda", "--out", str(tmp_path / "out" / "x.pt")])
    assert not (tmp_path / "out").exists()


def test_imagenet_vgg_offline_without_cached_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"could not get ImageNet VGG16 weights .*vgg16-397923af\.pth.*--vgg-weights PATH"):
        train_ae.main(["--loss", "perceptual", "--vgg-weights", "imagenet", "--out", str(tmp_path / "out" / "a.pt"),
                       *tiny_args(tmp_path)])
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_output_folder_that_cannot_be_created_or_written(fitted, tmp_path, monkeypatch):
    _, curve, _ = fitted
    (tmp_path / "taken").write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot create output folder .*taken.*; choose another --out"):
        train_ae.main(["--out", str(tmp_path / "taken" / "a.pt"), *tiny_args(tmp_path)])
    with pytest.raises(UserError, match="cannot create output folder .*taken"):
        eval_curve.main(["--ckpt", str(curve), *EVAL_FLAGS, "--out", str(tmp_path / "taken" / "deeper" / "e.json")])
    (tmp_path / "locked").mkdir()
    if os.geteuid() != 0:  # root may write anywhere: then pretend the folder is read-only
        (tmp_path / "locked").chmod(0o500)
    else:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p).name == "locked" else real(p, mode, **kw))
    try:
        with pytest.raises(UserError, match="output folder .*locked is not writable; choose another --out"):
            train_ae.main(["--out", str(tmp_path / "locked" / "a.pt"), *tiny_args(tmp_path)])
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert files_under(tmp_path) == ["taken"]


# ---------------------------------------------------------------- 5. divergence

def test_nan_loss_stops_training_naming_epoch_and_step_keeps_the_last_good_epoch_and_its_advice_works(reference, tmp_path, monkeypatch):
    flags, _, _ = reference
    steps = []

    def loss_with_a_nan(recon, target, reduction="mean", **kwargs):
        loss = ae.mse(recon, target, reduction)
        if torch.is_grad_enabled():  # a training step, not an evaluation
            steps.append(1)
            if len(steps) == 6:  # 4 steps per epoch: epoch 2, step 2
                return loss * float("nan")
        return loss

    with monkeypatch.context() as mp:
        mp.setattr(training, "make_loss", lambda *args, **kwargs: loss_with_a_nan)
        out = tmp_path / "a.pt"
        with pytest.raises(UserError, match=r"training diverged: loss is nan at epoch 2, step 2; the learning rate .* is too high") as err:
            train_ae.main([*flags, "--out", str(out)])
    assert files_under(tmp_path) == ["a.resume.pt"]
    assert load_checkpoint(tmp_path / "a.resume.pt", RESUME)["epoch"] == 0  # epoch 1 is kept

    # The advice works: the same flags with the advised --lr and without --resume train afresh; with
    # --resume the lower rate would be refused, since the resume state was started with another.
    lr = re.fullmatch(r".*: rerun without --resume and with --lr (\S+)", str(err.value)).group(1)
    assert float(lr) == pytest.approx(1e-4)  # a tenth of the default 1e-3
    with pytest.raises(UserError, match=r"different settings \(lr\)"):
        train_ae.main([*flags, "--lr", lr, "--out", str(out), "--resume"])
    train_ae.main([*flags, "--lr", lr, "--out", str(out)])
    ckpt = load_checkpoint(out, AE_FORMAT)
    assert ckpt["config"]["lr"] == float(lr) and [h["epoch"] for h in ckpt["metrics"]["history"]] == list(range(1, EPOCHS + 1))
    assert not (tmp_path / "a.resume.pt").exists()


def test_too_high_a_learning_rate_is_reported_as_such(tmp_path):
    message = r"diverged: loss is nan at epoch 1, step \d+; the learning rate 1e\+30 is too high for this data: rerun without --resume and with --lr 1e\+29$"
    with pytest.raises(UserError, match=message):
        train_ae.main(["--lr", "1e30", "--out", str(tmp_path / "out" / "a.pt"), *tiny_args(tmp_path, **{"--epochs": 2})])
    assert files_under(tmp_path / "out") == []


def test_infinite_loss_is_divergence_too():
    model = ae.AutoEncoder(4, 2)
    steps = []

    def loss(recon, target):
        steps.append(1)
        return ae.mse(recon, target) * (float("inf") if len(steps) == 3 else 1.0)

    with pytest.raises(UserError, match="loss is inf at epoch 5, step 3"):
        step = training.Step(training.Objective(loss), torch.optim.Adam(model.parameters()), torch.device("cpu"), 4)
        training.train_epoch(model, torch.zeros(16, 3, 64, 64, dtype=torch.uint8), step, generator=torch.Generator().manual_seed(0), epoch=4)


# ---------------------------------------------------------------- 6. determinism

def saved_bytes(value) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def assert_identical_files(a: Path, b: Path, kind: str) -> None:
    """Every tensor equal, and the files byte for byte."""
    x, y = load_checkpoint(a, kind), load_checkpoint(b, kind)
    assert_same_tensors(x["state_dict"], y["state_dict"])
    assert a.read_bytes() == b.read_bytes()


def test_same_seed_and_flags_give_identical_train_ae_checkpoints(reference, tmp_path):
    flags, ref_out, _ = reference
    out = tmp_path / "a.pt"
    train_ae.main([*flags, "--out", str(out)])
    assert_identical_files(out, ref_out, AE_FORMAT)
    assert out.with_suffix(".png").read_bytes() == ref_out.with_suffix(".png").read_bytes()


def test_same_seed_and_flags_give_identical_fit_curve_checkpoints(fitted, tmp_path):
    flags, ref_out, _ = fitted
    out = tmp_path / "c.pt"
    fit_curve.main([*flags, "--out", str(out)])
    assert_identical_files(out, ref_out, CURVE_FORMAT)


# ---------------------------------------------------------------- 7. full disk

def full_disk_at(monkeypatch, where: str, name: str) -> None:
    """Make writing a file called `name` fail with ENOSPC when creating the temporary file, while
    writing it (after a few bytes), or when syncing it."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_mkstemp, real_fdopen, temps = tempfile.mkstemp, os.fdopen, {}

    def mkstemp(*args, prefix="", **kwargs):
        if where == "create" and prefix.startswith(f".{name}"):
            raise full
        fd, tmp = real_mkstemp(*args, prefix=prefix, **kwargs)
        temps[fd] = Path(tmp).name.startswith(f".{name}")
        return fd, tmp

    class FillsUp(io.RawIOBase):
        def __init__(self, f):
            self.f, self.room = f, 10

        def write(self, b):
            if where == "write" and len(b) > self.room:
                self.f.write(bytes(b)[: self.room])
                raise full
            self.room -= len(b)
            return self.f.write(b)

        def fileno(self):
            if where == "fsync":
                raise full
            return self.f.fileno()

        def flush(self):
            self.f.flush()

        def close(self):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FillsUp(f) if temps.pop(fd, False) else f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("where", ["create", "write", "fsync"])
def test_full_disk_keeps_the_previous_file_and_says_so(where, tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    save_checkpoint(path, "test", {"value": 1})
    previous = path.read_bytes()
    full_disk_at(monkeypatch, where, "x.pt")
    with pytest.raises(UserError, match=r"could not write .*x\.pt: No space left on device; the previous file, if any, is unchanged"):
        save_checkpoint(path, "test", {"value": torch.zeros(1000)})
    assert path.read_bytes() == previous and files_under(tmp_path) == ["x.pt"]  # no temporary file left behind


def test_full_disk_at_the_final_checkpoint_keeps_the_old_one_and_resume_finishes(reference, tmp_path, monkeypatch):
    flags, ref_out, _ = reference
    out = tmp_path / "a.pt"
    save_ae(out, ae.AutoEncoder(8, 4), {"previous": True}, {})
    previous = out.read_bytes()
    with monkeypatch.context() as mp:
        full_disk_at(mp, "write", "a.pt")
        with pytest.raises(UserError, match="could not write .*a.pt: No space left on device"):
            train_ae.main([*flags, "--out", str(out)])
    assert out.read_bytes() == previous
    assert load_checkpoint(tmp_path / "a.resume.pt", RESUME)["epoch"] == EPOCHS - 1
    train_ae.main([*flags, "--out", str(out), "--resume"])  # space freed: --resume writes it
    assert_same_tensors(weights(out), weights(ref_out))


def test_full_disk_for_the_data_cache_is_a_warning(tmp_path, monkeypatch, capsys):
    config = data.data_config(type("Args", (), {})(), base={"synthetic_size": 8, "cache_dir": str(tmp_path / "cache")})
    full_disk_at(monkeypatch, "write", "synthetic-train")
    images = data.load_split(config, "train", progress=False)
    assert len(images) == 8 and "could not write the data cache" in capsys.readouterr().err
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------- fuzz of every loader

@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Valid files of each kind the loaders read, small: their paths by loader name."""
    tmp = tmp_path_factory.mktemp("templates")
    torch.manual_seed(0)
    model_a, model_b = ae.AutoEncoder(4, 2), ae.AutoEncoder(4, 2)
    config = {"model": ae.model_config(model_a), "loss": "mse", "seed": 0, "data": {}, "vgg_weights": None}
    save_ae(tmp / "ae.pt", model_a, config, {"test_mse": 0.1})
    save_ae(tmp / "b.pt", model_b, config, {"test_mse": 0.1})
    net = fit_curve.build_curve(model_a, model_b, "bezier", 3)
    endpoints = [{"path": str(tmp / p), "sha256": files.file_sha256(tmp / p), "config": config} for p in ("ae.pt", "b.pt")]
    save_checkpoint(tmp / "curve.pt", CURVE_FORMAT, {"state_dict": net.state_dict(), "history": [],
                                                     "config": {"curve": "bezier", "num_bends": 3, "model": config["model"],
                                                                "loss": "mse", "endpoints": endpoints}})
    optimizer = torch.optim.Adam(model_a.parameters())
    model_a(torch.rand(2, 3, 64, 64)).mean().backward()
    optimizer.step()
    training.save_resume(tmp / "resume.pt", model_a, optimizer, 1, [{"epoch": 1}], {"seed": 0})
    cache_config = data.data_config(type("Args", (), {})(), base={"synthetic_size": 6, "cache_dir": str(tmp / "cache")})
    images = data.load_split(cache_config, "train", progress=False)
    (cache,) = (tmp / "cache").glob("*.pt")
    vgg = ae.vgg16_trunk().state_dict()
    torch.save({f"features.{k}": v for k, v in list(vgg.items())[:4]}, tmp / "vgg.pth")  # a valid-looking start of one
    return {"load_checkpoint": tmp / "ae.pt", "load_ae": tmp / "ae.pt", "load_curve": tmp / "curve.pt",
            "load_resume": tmp / "resume.pt", "cache": cache, "vgg16_features": tmp / "vgg.pth",
            "cache_config": cache_config, "cache_images": images}


def random_value(rng: random.Random, depth: int = 0):
    choices = [lambda: None, lambda: rng.randint(-3, 10**6), lambda: rng.random(), lambda: "x" * rng.randint(0, 3),
               lambda: True, lambda: torch.randn([rng.randint(0, 3) for _ in range(rng.randint(0, 2))]),
               lambda: torch.zeros(2, dtype=torch.uint8), lambda: [rng.random()]]
    if depth < 2:
        choices += [lambda: {rng.choice(["path", "sha256", "model", "0.weight", 3]): random_value(rng, depth + 1)},
                    lambda: [random_value(rng, depth + 1)], lambda: (random_value(rng, depth + 1),)]
    return rng.choice(choices)()


def mutated(rng: random.Random, value, depth: int = 0):
    """`value` with some entries deleted or replaced, at any depth."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < 0.08:
                continue
            out[key] = random_value(rng) if roll < 0.2 else mutated(rng, item, depth + 1) if roll < 0.6 else item
        if rng.random() < 0.1:
            out[rng.choice(["format", "extra", 7])] = random_value(rng)
        return out
    if isinstance(value, list) and value:
        return [mutated(rng, item, depth + 1) for item in value]
    if isinstance(value, torch.Tensor) and rng.random() < 0.3:
        return random_value(rng)
    return value


def fuzz_files(template: Path, folder: Path, seed: int, count: int):
    """Seeded broken versions of `template`: random bytes, truncations, flipped bytes, and mutated dicts."""
    rng = random.Random(seed)
    good = template.read_bytes()
    content = torch.load(template, weights_only=True)
    for i in range(count):
        kind = ["bytes", "truncated", "flipped", "dict", "dict"][i % 5]
        if kind == "bytes":
            blob = rng.choice([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"]) + rng.randbytes(rng.randint(0, 400))
        elif kind == "truncated":
            blob = good[: rng.randrange(1, len(good))]
        elif kind == "flipped":
            flipped = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            blob = bytes(flipped)
        else:
            blob = saved_bytes(mutated(rng, content))
        path = folder / f"{i}-{kind}.pt"
        path.write_bytes(blob)
        yield kind, path


def same_content(a, b) -> bool:
    return saved_bytes(a) == saved_bytes(b)


def fuzz_one(loader: str, path: Path, templates: dict, kind: str, capsys) -> None:
    """Load `path` with `loader`: it must load into something usable, or be refused with our error type."""
    x = torch.rand(1, 3, 64, 64)
    try:
        if loader == "load_checkpoint":
            loaded = load_checkpoint(path, AE_FORMAT)
            if kind in ("truncated", "flipped"):  # damage that is not refused must not have changed anything
                assert same_content(loaded, torch.load(templates["load_checkpoint"], weights_only=True))
        elif loader == "load_ae":
            files.load_ae(path)[0].eval()(x)
        elif loader == "load_curve":
            files.load_curve(path)[0].eval()(x, t=0.5)
        elif loader == "load_resume":
            model = ae.AutoEncoder(4, 2)
            optimizer = torch.optim.Adam(model.parameters())
            training.load_resume(path, model, optimizer, {"seed": 0})
            model(x.expand(2, -1, -1, -1)).mean().backward()  # a loaded state must train
            optimizer.step()
        elif loader == "vgg16_features":
            vgg.vgg16_features(str(path))
        elif loader == "cache":
            templates["cache"].write_bytes(path.read_bytes())
            images = data.load_split(templates["cache_config"], "train", progress=False)
            assert torch.equal(images, templates["cache_images"])  # read, or refused and rebuilt
            capsys.readouterr()
    except UserError:
        pass


LOADERS = ["load_checkpoint", "load_ae", "load_curve", "load_resume", "cache", "vgg16_features"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns about some odd values it is handed
@pytest.mark.parametrize("loader", LOADERS)
def test_fuzzed_files_load_or_are_refused_with_our_error(loader, templates, tmp_path, capsys):
    template = templates[loader]
    count = 20 if loader == "vgg16_features" else 60
    for kind, path in fuzz_files(template, tmp_path, LOADERS.index(loader), count):
        try:
            fuzz_one(loader, path, templates, kind, capsys)
        except Exception as e:
            raise AssertionError(f"{loader} on {path.name}: {type(e).__name__}: {e}") from e


def test_cache_whose_key_holds_a_tensor_is_rebuilt(templates, capsys):
    cache, config = templates["cache"], templates["cache_config"]
    stored = load_checkpoint(cache, data.CACHE_KIND)
    save_checkpoint(cache, data.CACHE_KIND, {"images": stored["images"], "skipped": 0,
                                             "key": {**stored["key"], "count": torch.tensor([6, 6])}})
    assert torch.equal(data.load_split(config, "train", progress=False), stored["images"])


def test_vgg_file_with_a_non_string_key_is_refused(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1), 0: torch.zeros(1)}, tmp_path / "vgg.pth")
    with pytest.raises(UserError, match="not a VGG16 state dict"):
        vgg.vgg16_features(str(tmp_path / "vgg.pth"))


def test_bench_strict_exits_nonzero_naming_the_missed_figures_after_writing_them(tmp_path, monkeypatch, capsys):
    import bench

    measured = {  # what each figure's function returns, without timing anything: figures 1 and 5 miss their targets
        "bench_curve_overhead": {"ratio": 1.2, "met": False},
        "bench_efficiency": {"best_fraction": 0.8, "met": True, "best_kernel": "gemm 2048x2048x2048", "best_kernel_gflops": 150.0,
                             "best_bf16_fraction": 0.4, "best_bf16_kernel": "gemm 2048x2048x2048", "best_bf16_kernel_gflops": 600.0,
                             "channels_last_speedup": 1.0, "kernels_gflops": {"fp32 gemm 2048x2048x2048": 150.0}, "fastest": "bf16 channels_last",
                             "variants": {"fp32 channels_last": {"step_s": 0.5, "gflops": 120.0, "fraction_of_kernel": 0.8, "precision": "fp32"},
                                          "fp32 channels_last, compiled": {"error": "InductorError: no C++ compiler"}},
                             "channels_last": {"gflops": 120.0, "step_s": 0.5}, "contiguous": {"gflops": 110.0}},
        "eval_setup": None,
        "bench_eval": {"speedup": 24.0, "max_rel_error": {"train": 0.005, "test": 0.008}, "points": [], "default": {"bn": 1000},
                       "bn_images_error_segment_middle": {"1000": 0.0006}, "default_s_per_point": 2.0},
        "bench_data": {"cache_over_training": 100.0, "cache_over_jpeg": 20.0, "cache_images_per_s": 1e4, "met": True},
        "bench_perceptual": {"precision": "fp32", "perceptual_over_mse": 9.0, "uncached_over_mse": 10.0, "perceptual_fp32_over_mse": 9.0,
                             "naive_over_ours": 2.0, "met": False},
        "bench_plane": {"subsets": {"bn": 2000, "train": 2000, "test": 2000}, "s_per_point": 4.0, "over_eval_point": 2.0},
        "bench_quality": {"quality_images": 250, "psnr_ssim_over_without": 1.05, "lpips_over_without": 2.5, "met": True},
    }
    for name, value in measured.items():
        monkeypatch.setattr(bench, name, lambda *args, value=value, **kwargs: value)
    out = tmp_path / "bench.json"
    bench.main(["--out", str(out)])  # without --strict a missed target is only printed
    assert out.is_file() and "NO" in capsys.readouterr().out
    out.unlink()
    with pytest.raises(UserError, match=r"--strict: 2 figure\(s\) missed their target: 1\. curve step / plain step; 5\. perceptual step"):
        bench.main(["--out", str(out), "--strict"])
    assert json.loads(out.read_text())["curve_overhead"]["ratio"] == 1.2  # written before exiting


def test_bench_holds_each_training_step_against_the_kernel_of_its_own_precision_and_reports_a_failed_compile(monkeypatch):
    import argparse

    import bench

    fake = {torch.float32: {"gemm 2048x2048x2048": 100e9, "conv": 200e9}, torch.bfloat16: {"gemm 2048x2048x2048": 800e9, "conv": 400e9}}
    monkeypatch.setattr(bench, "dense_kernels", lambda device, dtype=torch.float32, repeats=5: fake[dtype])

    def no_compiler(model):
        def fails(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    e = bench.bench_efficiency(argparse.Namespace(width=2, batch_size=2, repeats=1, no_compile=False), torch.device("cpu"))
    assert e["best_kernel_gflops"] == 200 and e["best_bf16_kernel_gflops"] == 800
    for name, v in e["variants"].items():
        if v["compiled"]:
            assert "no working C++ compiler" in v["error"] and "step_s" not in v, name  # reported, and not timed
        else:
            ceiling = {"fp32": 200e9, "bf16": 800e9}[v["precision"]]
            assert v["fraction_of_kernel"] == pytest.approx(v["gflop_per_step"] * 1e9 / v["step_s"] / ceiling), name
    assert {v["precision"] for v in e["variants"].values() if not v["compiled"]} == {"fp32", "bf16"}
    assert e["best_fraction"] == max(e["variants"][n]["fraction_of_kernel"] for n in ("fp32 contiguous", "fp32 channels_last"))
    assert e["met"] == (e["best_fraction"] >= 0.70)


def test_bench_data_figure_decodes_real_jpeg_files():
    # the one bench figure cheap enough to run for real (its fakes in the test above never touch the decoder)
    import argparse

    import bench

    r = bench.bench_data(argparse.Namespace(batch_size=128, repeats=1), torch.device("cpu"), train_rate=100.0)
    assert r["jpeg_images_per_s"] > 0 and r["cache_over_jpeg"] > 1  # reading the uint8 cache beats decoding JPEGs
    assert r["cache_over_training"] == pytest.approx(r["cache_images_per_s"] / 100.0)


def test_bench_names_the_machine_its_figures_come_from(monkeypatch):
    import bench

    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "bf16_speedup", lambda kind: {"autoencoder": 2.0, "vgg": 3.0}[kind])  # a CPU where bf16 is fast
    for amx, avx512_bf16, perceptual in ((True, False, "bf16-vgg"), (False, True, "bf16-vgg"), (False, False, "fp32")):
        mse = "bf16" if amx or avx512_bf16 else "fp32"
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        m = bench.machine(cpu)
        assert (m["amx"], m["avx512_bf16"]) == (amx, avx512_bf16)
        assert m["auto_precision"] == {"mse": mse, "perceptual": perceptual}  # what `auto` resolves to on such a CPU
        line = bench.machine_line(m)
        assert f"AMX {'yes' if amx else 'no'}" in line and f"AVX-512 BF16 {'yes' if avx512_bf16 else 'no'}" in line
        assert f"mse {mse}, perceptual {perceptual}" in line and ("3.00x" in line) == ("2.00x" in line) == (amx or avx512_bf16)
