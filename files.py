"""Files on disk: atomic writes, and checkpoints that are checked before they are trusted.

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
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


class UserError(Exception):
    """A problem the user can fix; scripts print it as one line and exit non-zero."""


class CheckpointError(UserError):
    """A file that is missing, damaged, or not one of this project's checkpoints."""


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise UserError(f"could not write {path}: {e.strerror or e}; the previous file, if any, is unchanged") from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, allow_nan=True)
    return atomic_write(path, lambda f: f.write(text + "\n"), binary=False)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the file's suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


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
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds pickled Python objects, which are never loaded (they could run code)"
        raise CheckpointError(f"cannot load checkpoint {path}: {reason[:200]}; recreate it with this toolkit") from None
    if not isinstance(data, dict) or "format" not in data:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no format tag); expected a '{kind}' file")
    if data["format"] != kind:
        raise CheckpointError(f"{path} is a '{data['format']}' file, but a '{kind}' checkpoint is needed here")
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is damaged or from another version")
    return data


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


AE_FORMAT = "aemc-ae-v1"
CURVE_FORMAT = "aemc-curve-v1"


def save_ae(path: str | os.PathLike, model, config: dict, metrics: dict) -> Path:
    """Write an autoencoder checkpoint (CPU state_dict + plain config + metrics) atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_checkpoint(path, AE_FORMAT, {"state_dict": state, "config": config, "metrics": metrics})


def load_ae(path: str | os.PathLike):
    """Load an endpoint written by train_ae.py: (AutoEncoder with its weights, checkpoint dict)."""
    import ae  # imported here: ae.py uses this module's error types

    ckpt = load_checkpoint(path, AE_FORMAT, ("state_dict", "config", "metrics"))
    try:
        model = ae.build_model(ckpt["config"]["model"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not hold a usable autoencoder ({_first_line(e)}); retrain it") from None
    return model, ckpt


def load_curve(path: str | os.PathLike, check_endpoints: bool = True):
    """Load a curve written by fit_curve.py: (CurveNet with its bends, checkpoint dict). With
    `check_endpoints`, refuse a curve whose endpoint files changed since the fit."""
    import ae
    import curves

    ckpt = load_checkpoint(path, CURVE_FORMAT, ("state_dict", "config"))
    try:
        config = ckpt["config"]
        net = curves.CurveNet(ae.build_model(config["model"]), config["curve"], int(config["num_bends"]))
        net.load_state_dict(ckpt["state_dict"])
        endpoints = list(config["endpoints"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not hold a usable curve ({_first_line(e)}); refit it with fit_curve.py") from None
    if check_endpoints:
        for end in endpoints:
            end_path = Path(end["path"])
            if end_path.exists() and file_sha256(end_path) != end["sha256"]:
                raise CheckpointError(f"endpoint {end_path} changed since the curve {path} was fitted; "
                                      f"refit the curve (or restore the endpoint)")
    return net, ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:150]
