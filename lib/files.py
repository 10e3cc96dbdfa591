"""Files on disk: atomic writes, checkpoints that are checked before they are trusted, the format tags of
every file the toolkit writes, and result JSONs (VGG16 weight files: lib/vgg.py).

Every file the project writes goes through `atomic_write`: it is written to a temporary file in
the same folder and renamed into place, so a crash or a full disk leaves the previous file (or
none), never a truncated one. Checkpoints are plain dicts of tensors and plain data, read with
`torch.load(weights_only=True)`, so loading one never runs code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

import ae
import curves

# mkstemp makes its file private (0600); written files get the mode a plain open() gives them.
# os.umask can only be read by setting it, so it is read once, here.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

# A temporary file of atomic_write older than this was left by a killed write: the next write to its folder removes
# it. Age, not name, makes removal safe: a live write (one write and an fsync) never leaves its file untouched for an
# hour, and were a paused writer's file removed all the same, its rename would fail loudly, never give a wrong file.
STALE_TEMP_SECONDS = 3600
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # mkstemp(prefix=".NAME.", suffix=".tmp")


class UserError(Exception):
    """A problem the user can fix; scripts print it as one line and exit non-zero."""


class CheckpointError(UserError):
    """A file that is missing, damaged, or not one of this project's checkpoints."""


class FormatError(CheckpointError):
    """A sound PyTorch file that is not the kind of checkpoint asked for (another format tag, or none)."""


def ensure_dir(folder: str | os.PathLike) -> Path:
    """Create `folder` (and parents) or raise a UserError saying why it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {folder}: {e.strerror}; choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder {folder} is not writable; choose another --out")
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    folder = ensure_dir(path.parent if str(path.parent) else ".")
    remove_stale_temps(folder)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            _remove(tmp)
        raise UserError(f"could not write {path}: {e.strerror or e}; the previous file, if any, is unchanged") from None
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        raise
    return path


def remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files that killed atomic writes left in `folder` (see STALE_TEMP_SECONDS)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    try:
        with os.scandir(folder) as entries:
            temps = [entry for entry in entries if _TEMP_NAME.fullmatch(entry.name)]
    except OSError:
        return
    for entry in temps:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:  # gone already (another writer cleaned it up), or not ours to remove
            pass


def _chmod(path: str | os.PathLike, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:  # some file systems (FAT, SMB mounts) refuse chmod; the file itself is fine
        pass


def _remove(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, allow_nan=True)
    return atomic_write(path, lambda f: f.write(text + "\n"), binary=False)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically, then close it; the format follows the file's suffix."""
    import matplotlib.pyplot as plt  # already imported by whoever drew `fig`

    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
    finally:
        plt.close(fig)


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict) -> Path:
    """Save `payload` (tensors and plain data only) tagged with format `kind`, atomically."""
    data = {"format": kind, **payload}
    buf = io.BytesIO()
    torch.save(data, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: str | os.PathLike, kind: str, required: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint of format `kind` safely; raise CheckpointError if it is anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or create it first")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the .pt file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (an interrupted copy?); recreate it")
    try:
        # torch.save writes a zip with a CRC-32 per record, but torch.load never checks them:
        # without this, a flipped byte in a tensor would load silently as a wrong value
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"checkpoint {path} is damaged (the checksum of {damaged} does not match); recreate it")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}; check the file and its permissions") from None
    except CheckpointError:
        raise
    except Exception as e:  # zipfile and torch raise many types for damaged or unsafe files
        raise CheckpointError(f"cannot load checkpoint {path}: {load_failure(e)}; recreate it with this toolkit") from None
    if not isinstance(data, dict) or "format" not in data:
        raise FormatError(f"{path} is not a checkpoint of this toolkit (no format tag); expected a '{kind}' file")
    if data["format"] != kind:
        raise FormatError(f"{path} is a '{data['format']}' file, but a '{kind}' checkpoint is needed here")
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is damaged or from another version")
    return data


def load_failure(e: Exception) -> str:
    """Why torch.load refused a file, in a few words (torch's own messages run to paragraphs and
    suggest weights_only=False, the one thing never to do with a file one cannot trust)."""
    text = str(e)
    if any(sign in text for sign in ("GLOBAL", "add_safe_globals", "unrecognized function")):
        return "it holds pickled Python objects, which are never loaded (they could run code)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue", "Check the doc"))]
    detail = re.sub(r"^\[enforce fail at [^]]*\]\W*", "", (specific or lines or [type(e).__name__])[0]).split(". ")[0]
    return f"it is truncated, damaged or not a PyTorch file ({detail[:120]})"


def plain_equal(a: Any, b: Any) -> bool:
    """`a == b` for plain data read from a file, False where the comparison cannot be made (a
    tensor where a number was expected makes == elementwise, and bool() of that raises)."""
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return False


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Every format tag of the toolkit, defined here once: checkpoints carry them in their "format" key, result JSONs in theirs.
AE_FORMAT = "aemc-ae-v1"  # train_ae.py's endpoints
CURVE_FORMAT = "aemc-curve-v1"  # fit_curve.py's curves
RESUME_FORMAT = "aemc-resume-v1"  # the per-epoch resume state of train_ae.py and fit_curve.py
EVAL_FORMAT = "aemc-eval-v1"  # eval_curve.py's evaluation JSON
PLANE_FORMAT = "aemc-plane-v1"  # plane.py's JSON
PLANE_PARTIAL_FORMAT = "aemc-plane-partial-v1"  # plane.py's rows so far
ENSEMBLE_FORMAT = "aemc-ensemble-v1"  # ensemble.py's JSON
FUNCTION_SPACE_FORMAT = "aemc-function-space-v1"  # function_space.py's JSON
STUDY_FORMAT = "aemc-study-v1"  # run_study.py's study.json
COMPLEX_FORMAT, SIMPLEX_FORMAT = "aemc-complex-v1", "aemc-simplex-v1"  # simplex.py's complex checkpoint and its JSON
CACHE_FORMAT = "aemc-cache-v1"  # data.py's decoded datasets
SUBSPACE_FORMAT = "aemc-subspace-v1"  # train_ae.py --subspace's line checkpoint and its JSON
WRITERS = {EVAL_FORMAT: "eval_curve.py", PLANE_FORMAT: "plane.py", ENSEMBLE_FORMAT: "ensemble.py",
           FUNCTION_SPACE_FORMAT: "function_space.py", STUDY_FORMAT: "run_study.py", SIMPLEX_FORMAT: "simplex.py"}


def read_result(path: str | os.PathLike, formats: tuple[str, ...]) -> dict:
    """Read a result JSON whose format is one of `formats`, refusing anything else; its path is kept as "_path"."""
    path = Path(path)
    scripts = " or ".join(WRITERS[f] for f in formats)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run {scripts} first") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}; rerun {scripts}") from None
    if not isinstance(result, dict) or result.get("format") not in formats:
        raise UserError(f"{path} is not a file of {scripts} (format {' or '.join(formats)})")
    result["_path"] = str(path)
    return result


def save_ae(path: str | os.PathLike, model, config: dict, metrics: dict) -> Path:
    """Write an autoencoder checkpoint (CPU state_dict + plain config + metrics) atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_checkpoint(path, AE_FORMAT, {"state_dict": state, "config": config, "metrics": metrics})


def load_ae(path: str | os.PathLike):
    """Load an endpoint written by train_ae.py: (AutoEncoder with its weights, checkpoint dict)."""
    ckpt = load_checkpoint(path, AE_FORMAT, ("state_dict", "config", "metrics"))
    try:
        model = ae.build_model(ckpt["config"]["model"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not hold a usable autoencoder ({_first_line(e)}); retrain it") from None
    return model, ckpt


def load_curve(path: str | os.PathLike, check_endpoints: bool = True):
    """Load a curve written by fit_curve.py: (CurveNet with its bends, checkpoint dict). With
    `check_endpoints`, refuse a curve whose endpoint files changed since the fit."""
    ckpt = load_checkpoint(path, CURVE_FORMAT, ("state_dict", "config"))
    try:
        config = ckpt["config"]
        net = curves.CurveNet(ae.build_model(config["model"]), config["curve"], int(config["num_bends"]))
        net.load_state_dict(ckpt["state_dict"])
        endpoints = [(Path(end["path"]), end["sha256"]) for end in config["endpoints"]]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not hold a usable curve ({_first_line(e)}); refit it with fit_curve.py") from None
    if check_endpoints:
        for end_path, sha256 in endpoints:
            if end_path.is_file() and file_sha256(end_path) != sha256:
                raise CheckpointError(f"endpoint {end_path} changed since the curve {path} was fitted; "
                                      f"refit the curve (or restore the endpoint)")
    return net, ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:150]
