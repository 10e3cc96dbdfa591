"""Where run_study.py runs its steps: one after another in this process (`local`), or as Ray tasks in
parallel on this machine's cores or GPUs, or on a cluster (`ray`, an optional dependency); and the lock
that keeps two studies out of one folder.

A step is a script's `main(argv)`, named by module; which step runs when is run_study's business.
Ray is imported only when the Ray executor is opened, so this module imports without it.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

import torch

from lib.files import UserError, ensure_dir

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

RAY_INSTALL = "pip install -r requirements-ray.txt"
REPO = Path(__file__).resolve().parent.parent  # where the scripts are: on every node's PYTHONPATH


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside the block and restored after (None: left alone)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)


def run_step(script: str, argv: list[str], threads: int | None = None, cwd: str | None = None) -> float:
    """Run `script`.main(argv), the module imported by name, on `threads` torch threads; its seconds.
    A Ray worker first moves to the driver's folder `cwd`, which the study's relative paths start from."""
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError:
            raise UserError(f"the study's folder {cwd} is not on this Ray node; every node needs the repository "
                            f"and the study folder at the same path (a shared filesystem)") from None
    start = time.time()
    with torch_threads(threads):
        importlib.import_module(script).main(argv)
    return time.time() - start


class LocalPool:
    """Steps one at a time, in this process, as each is waited for: today's behaviour."""

    serial, slots = True, 1

    def __init__(self, threads: int | None):
        self.threads, self.queued = threads, None

    def free(self) -> bool:
        return self.queued is None

    def submit(self, index: int, step: dict) -> None:
        self.queued = (index, step)

    def wait(self) -> tuple[int, float | None, str | None]:
        """Run the queued step: (its index, seconds, None), or (index, None, the one-line error)."""
        (index, step), self.queued = self.queued, None
        try:
            return index, run_step(step["script"], step["argv"], self.threads), None
        except Exception as e:
            if not isinstance(e, UserError):
                traceback.print_exc()
            return index, None, str(e)


class RayPool:
    """Every ready step submitted at once as a Ray task asking for 1 GPU (a CUDA study) or `threads`
    CPUs; Ray starts each when its resources are free, on any node."""

    serial = False

    def __init__(self, ray, threads: int, cuda: bool):
        self.ray, self.threads, self.running = ray, threads, {}
        resources = {"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": threads}
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # where workers import the scripts from
        self.task = ray.remote(run_step).options(max_retries=0, runtime_env={"env_vars": {"PYTHONPATH": path}},
                                                 **resources)  # a failed step is reported, not retried
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if cuda and not any(n.get("GPU", 0) >= 1 for n in nodes):
            raise UserError("the study's device is CUDA but the Ray cluster has no GPU; use --device cpu or join a cluster with GPUs")
        if not cuda and not any(n.get("CPU", 0) >= threads for n in nodes):
            raise UserError(f"no Ray node has the {threads} CPUs --threads-per-step asks for each step; lower it")
        total = ray.cluster_resources()
        self.slots = max(1, int(total.get("GPU", 0)) if cuda else int(total.get("CPU", 0)) // threads)

    def free(self) -> bool:
        return True  # Ray queues what cannot start yet

    def submit(self, index: int, step: dict) -> None:
        self.running[self.task.remote(step["script"], step["argv"], self.threads, os.getcwd())] = index

    def wait(self) -> tuple[int, float | None, str | None]:
        """The next step to finish: (its index, seconds, None), or (index, None, the one-line error)."""
        [ref], _ = self.ray.wait(list(self.running), num_returns=1)
        index = self.running.pop(ref)
        try:
            return index, self.ray.get(ref), None
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):
                return index, None, str(e.cause)
            print(e, file=sys.stderr)  # the worker's traceback
            return index, None, f"{type(e.cause).__name__}: {e.cause}"
        except self.ray.exceptions.RayError as e:  # the worker or its node died
            return index, None, str(e).strip().splitlines()[0]


def import_ray():
    """The ray module, or a UserError naming the install command."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def start_ray(ray, address: str | None = None, cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` ("auto": the one started on this machine), or start a local
    instance of `cpus` CPUs (default: every core); a start that fails is undone and said in one line."""
    try:
        # "local": a new instance even where an earlier `ray start` left its address behind in /tmp/ray
        ray.init(address=address or "local", num_cpus=None if address else (cpus or os.cpu_count()), include_dashboard=False)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, even bare Exception here
        ray.shutdown()
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise UserError(f"could not {where}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


@contextlib.contextmanager
def open_pool(executor: str, threads: int | None, cuda: bool, address: str | None = None,
              cpus: int | None = None) -> Iterator[LocalPool | RayPool]:
    """The pool the study's steps run on. `ray` joins or starts Ray (start_ray) and leaves it when the
    block ends, stopping an instance it started; a process that already runs Ray (a notebook, the
    tests) keeps it as it is, and `address` and `cpus` are not used."""
    if executor == "local":
        yield LocalPool(threads)
        return
    ray = import_ray()
    ours = not ray.is_initialized()
    if ours:
        start_ray(ray, address, cpus)
    try:
        yield RayPool(ray, threads or 1, cuda)
    finally:
        if ours:
            ray.shutdown()


LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `<folder>/.lock` (creating the folder) while the block runs, or raise a UserError naming
    the live process that holds it. On any exit the lock goes, and the folders it created if empty."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    ensure_dir(folder)
    path, fd = folder / LOCK_NAME, None
    try:
        fd = _acquire(path)
        yield path
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):  # while still holding it: see _acquire
                path.unlink()
            os.close(fd)
        for p in created:
            try:
                p.rmdir()
            except OSError:  # not empty: the run left its outputs there
                break


def _acquire(path: Path) -> int | None:
    """Lock `path` with flock and write who holds it. The kernel drops a flock when its holder dies,
    however it dies, so a lock file left by a killed run is simply taken over: no PID guessing."""
    if fcntl is None:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UserError(f"{path.parent} is in use by another run ({holder}); wait for it to end or stop it, "
                            f"or choose another --out") from None
        except OSError as e:  # a file system without locks: run unlocked rather than not at all
            print(f"warning: cannot lock {path} ({e.strerror}); make sure no other run uses {path.parent}", file=sys.stderr)
            os.close(fd)
            return None
        try:  # the holder before us unlinks the file as it releases it: lock the file that is there now
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join(sys.argv)}
    # written in place, not through atomic_write: a renamed file would be another file, unlocked
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    return fd


def _lock_holder(fd: int) -> str:
    """Who holds a lock file, in words, from what it holds."""
    try:
        info = json.loads(os.read(fd, 1 << 16))
        command = " ".join(str(info["command"]).split())
        return f"PID {info['pid']} on host {info['host']}, started {info['started']}, command: {command}"
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that has not yet written its PID"
