"""Shared pytest fixtures: tiny synthetic data and quickly trained endpoints."""
import contextlib

import pytest

import train_ae


def tiny_args(tmp, **overrides):
    """Flags for a run that takes about a second: 64 synthetic images, a width-4 autoencoder."""
    flags = {"--synthetic-size": 64, "--n-test": 32, "--width": 4, "--latent-dim": 8, "--batch-size": 16,
             "--epochs": 1, "--cache-dir": str(tmp / "cache"), "--eval-batch-size": 64, **overrides}
    return [str(x) for kv in flags.items() for x in kv]


@pytest.fixture(scope="session", autouse=True)
def real_bf16_speedup():
    """`--precision auto` trains the MSE autoencoder in bf16 on a machine where its pass measures faster in it. So that
    no test's numbers hang on the machine the suite runs on, every test (and session fixture) sees the autoencoder as
    no faster in bf16; the tests of the rule set it themselves and get the real measurement from this fixture. The
    VGG rule measures as it does for users (its tests pass in either precision)."""
    from lib import training

    real = training.bf16_speedup
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "bf16_speedup", lambda kind: 1.0 if kind == "autoencoder" else real(kind))
        yield real


@pytest.fixture(scope="session")
def endpoints(tmp_path_factory):
    """Two MSE endpoints (seeds 0 and 1), trained for 3 epochs on tiny data: their paths."""
    tmp = tmp_path_factory.mktemp("endpoints")
    paths = []
    for seed in (0, 1):
        out = tmp / f"mse_s{seed}.pt"
        train_ae.main(["--loss", "mse", "--seed", str(seed), "--out", str(out), *tiny_args(tmp, **{"--epochs": 3})])
        paths.append(out)
    return paths


@pytest.fixture(scope="session")
def one_epoch_curve(endpoints, tmp_path_factory):
    """A Bezier curve fitted for 1 epoch between the two endpoints (not aligned): its path. Evaluations of it write
    beside it under names of their own."""
    import fit_curve

    out = tmp_path_factory.mktemp("curve") / "curve.pt"
    fit_curve.main(["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--epochs", "1", "--batch-size", "16",
                    "--bn-images", "40", "--out", str(out)])
    return out


@contextlib.contextmanager
def killed_after_epoch(monkeypatch, epoch: int):
    """A run inside stops with KeyboardInterrupt (as on Ctrl-C) right after writing its resume state
    for `epoch` (0-based); the interrupt is expected, and the real save_resume is back afterwards."""
    from lib import training

    real = training.save_resume

    def save_then_stop(path, model, optimizer, done, *args):
        real(path, model, optimizer, done, *args)
        if done == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_resume", save_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(training, "save_resume", real)
