"""Tests of endpoint training (train_ae.py) and the perceptual loss (ae.py)."""
import json
import math
import urllib.error

import pytest
import torch
from PIL import Image

import ae
import data
import run_study
import train_ae
from lib import snapshots, training
from conftest import killed_after_epoch, tiny_args
from lib.files import UserError, load_ae


def weights(path):
    return load_ae(path)[0].state_dict()


def test_one_epoch_writes_checkpoint_metrics_and_png(tmp_path):
    out = tmp_path / "runs" / "mse_s0.pt"
    train_ae.main(["--out", str(out), *tiny_args(tmp_path)])
    model, ckpt = load_ae(out)
    assert ckpt["config"]["loss"] == "mse" and ckpt["config"]["model"]["latent_dim"] == 8
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert len(metrics["history"]) == 1
    assert 0 < metrics["test_mse"] < 1 and metrics["test_psnr"] == pytest.approx(ae.psnr(metrics["test_mse"]))
    with Image.open(out.with_suffix(".png")) as png:
        assert png.format == "PNG" and png.size == (8 * 66 + 2, 2 * 66 + 2)  # 8 images over 8 reconstructions
    assert not list(tmp_path.glob("runs/*.resume.pt"))  # the resume state is gone once the run is complete


def test_default_output_path_follows_loss_and_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_ae.main(["--loss", "mse", "--seed", "3", *tiny_args(tmp_path)])
    assert (tmp_path / "runs/ae/mse_s3.pt").is_file() and (tmp_path / "runs/ae/mse_s3.json").is_file()


def test_loss_falls_over_epochs(tmp_path):
    out = tmp_path / "a.pt"
    train_ae.main(["--out", str(out), *tiny_args(tmp_path, **{"--epochs": 4, "--lr": 3e-3})])
    history = json.loads(out.with_suffix(".json").read_text())["history"]
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]


def test_same_seed_same_weights_different_seed_different(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_ae.main(["--seed", str(seed), "--out", str(tmp_path / f"{name}.pt"), *tiny_args(tmp_path)])
        runs[name] = weights(tmp_path / f"{name}.pt")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"] if runs["a"][k].is_floating_point())


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised VGG16 state dict saved by the test, standing in for the ImageNet file."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16_test.pth"
    torch.save(vgg16(weights=None).features.state_dict(), path)
    return path


def test_perceptual_loss_from_file(vgg_file):
    loss = training.make_loss("perceptual", str(vgg_file))
    assert not loss.vgg.training and loss.weights_name == "file:vgg16_test.pth"
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert loss(x, x).item() == 0
    assert loss(x, y).item() > 0
    per_image = loss(x, y, reduction="none")
    assert per_image.shape == (2,) and torch.allclose(per_image.mean(), loss(x, y))
    model = ae.AutoEncoder(latent_dim=8, width=4)
    loss.train()
    assert not loss.vgg.training  # VGG stays in eval mode
    loss(model(x), x).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in loss.vgg.parameters())


def test_perceptual_training_records_its_vgg_weights(tmp_path, vgg_file):
    out = tmp_path / "p.pt"
    train_ae.main(["--loss", "perceptual", "--vgg-weights", str(vgg_file), "--out", str(out),
                   *tiny_args(tmp_path, **{"--synthetic-size": 32, "--n-test": 16})])
    _, ckpt = load_ae(out)
    assert ckpt["config"]["vgg_weights"] == "file:vgg16_test.pth"
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert metrics["test_perceptual"] == metrics["test_loss"] and metrics["test_mse"] > 0


def test_random_vgg_is_seeded_and_named():
    a, b = training.make_loss("perceptual", "random"), training.make_loss("perceptual", "random")
    assert a.weights_name == "random"
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_imagenet_weights_offline_say_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="vgg16-397923af.pth") as err:
        training.make_loss("perceptual", "imagenet")
    assert str(tmp_path) in str(err.value)


def test_missing_vgg_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        training.make_loss("perceptual", str(tmp_path / "nope.pth"))


def test_cached_target_features_give_the_same_losses(vgg_file):
    loss = training.make_loss("perceptual", str(vgg_file))
    torch.manual_seed(0)
    model = ae.AutoEncoder(latent_dim=8, width=4)
    images = (torch.rand(10, 3, 64, 64) * 255).to(torch.uint8)
    common = dict(batch_size=4, device=torch.device("cpu"))
    fresh = training.per_image_losses(model, images, loss, **common)
    with torch.inference_mode():
        cached = [loss.features(x) for x in data.batches(images, 4, memory_format=torch.channels_last)]
    reused = training.per_image_losses(model, images, loss, target_features=cached, **common)
    assert torch.equal(fresh["loss"], reused["loss"]) and fresh["loss"].min() > 0


def test_training_from_the_target_feature_cache_follows_the_recomputed_targets(vgg_file, monkeypatch):
    loss = training.make_loss("perceptual", str(vgg_file), ("relu1_2", "relu2_2"))
    images = (torch.rand(12, 3, 64, 64) * 255).to(torch.uint8)
    cpu = torch.device("cpu")
    cache = training.target_feature_cache(loss, images, batch_size=5, device=cpu)
    with torch.inference_mode():
        own = loss.features(images[7:8].float() / 255)
    assert [tuple(f.shape) for f in cache] == [(12, 64, 64, 64), (12, 128, 32, 32)]
    assert all(torch.allclose(c[7:8], f, rtol=1e-4, atol=1e-5) for c, f in zip(cache, own))
    losses, weights = {}, {}
    # wrong targets: every feature map doubled (another image's features would not do here: to a random VGG these
    # noise images look alike, and training on them moved the first epoch's loss by 1e-4 only)
    wrong = [2 * f for f in cache]
    for name, targets in (("recomputed", None), ("cached", cache), ("wrong", wrong)):
        torch.manual_seed(0)
        model = ae.AutoEncoder(latent_dim=8, width=4)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = training.Step(training.Objective(loss), optimizer, cpu, 4, target_features=targets)
        losses[name] = [training.train_epoch(model, images, step, generator=training.epoch_generator(0, e), epoch=e) for e in range(2)]
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert losses["cached"] == pytest.approx(losses["recomputed"], rel=1e-4)
    assert torch.allclose(weights["cached"], weights["recomputed"], atol=1e-5)
    # the cache is what training uses: wrong targets in it change the losses and the weights
    assert losses["wrong"][0] != pytest.approx(losses["recomputed"][0], rel=1e-2)
    assert not torch.allclose(weights["wrong"], weights["recomputed"], atol=1e-4)
    assert training.target_feature_cache(ae.mse, images, batch_size=5, device=cpu) is None  # MSE has no targets to cache
    monkeypatch.setattr(training, "FEATURE_CACHE_BYTES", 11 * (64 * 64 * 64 + 128 * 32 * 32) * 4)  # room for 11 of 12
    assert training.target_feature_cache(loss, images, batch_size=5, device=cpu) is None


# ---------------------------------------------------------------- the learning-rate schedule

def test_reference_schedule_values():
    """The paper's reference code: the base rate for the first half, linear down to 1% at 90%, then 1%."""
    factor = lambda fraction: training.lr_factor("ref", round(fraction * 1000), 1000)  # noqa: E731
    assert [factor(f) for f in (0.0, 0.25, 0.5)] == [1.0, 1.0, 1.0]
    assert factor(0.7) == pytest.approx((1.0 + 0.01) / 2)  # halfway down the linear part
    assert factor(0.9) == pytest.approx(0.01) and factor(0.95) == factor(1.0) == 0.01
    assert factor(0.6) > factor(0.7) > factor(0.8) > factor(0.9)
    assert training.lr_factor("cosine", 0, 10) == 1.0 and training.lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert training.lr_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert {training.lr_factor("constant", s, 10) for s in range(11)} == {1.0}


def test_schedule_is_applied_at_every_optimiser_step(monkeypatch):
    model = ae.AutoEncoder(latent_dim=4, width=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    seen, real_step = [], optimizer.step

    def step(*args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(optimizer, "step", step)
    images = torch.zeros(40, 3, 64, 64, dtype=torch.uint8)
    step = training.Step(training.Objective(ae.mse), optimizer, torch.device("cpu"), 8, lr_at=training.schedule_rates("ref", 0.1, 10))
    for epoch in range(2):  # 2 epochs of 5 steps: 10 steps in all
        training.train_epoch(model, images, step, generator=torch.Generator().manual_seed(epoch), epoch=epoch)
    assert len(seen) == 10
    assert seen[:6] == [0.1] * 6  # steps 0..5 of 10: alpha <= 0.5
    assert seen[6] > seen[7] > seen[8] and seen[9] == pytest.approx(0.001)  # falling, then 1% from 90% on


def test_rate_is_printed_and_recorded(tmp_path, capsys):
    out = tmp_path / "a.pt"
    train_ae.main(["--out", str(out), "--lr", "0.002", *tiny_args(tmp_path, **{"--epochs": 4})])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 4 and lines[0].startswith("epoch 1/4: lr 0.002 ") and lines[-1].startswith("epoch 4/4: lr 2e-05 ")
    metrics = json.loads(out.with_suffix(".json").read_text())
    _, ckpt = load_ae(out)
    assert metrics["config"]["schedule"] == ckpt["config"]["schedule"] == metrics["schedule"] == "ref"
    rates = [h["lr"] for h in metrics["history"]]
    assert rates[0] == rates[1] == 0.002 and 0.002 > rates[2] > 2e-5 and rates[3] == pytest.approx(2e-5)


@pytest.mark.parametrize("schedule, variant", [("ref", []), ("cosine", ["--noise", "0.1", "--l1", "1e-3"])])
def test_resume_mid_decay_gives_the_uninterrupted_weights(tmp_path, monkeypatch, schedule, variant):
    """Killed after epoch 3 of 4 (the rate is falling), --resume ends on the same bytes as one run (also denoising
    and sparse: the noise is drawn from the epoch's generator, not the global one)."""
    flags = ["--schedule", schedule, *variant, *tiny_args(tmp_path, **{"--epochs": 4})]
    train_ae.main([*flags, "--out", str(tmp_path / "whole.pt")])
    with killed_after_epoch(monkeypatch, 2):
        train_ae.main([*flags, "--out", str(tmp_path / "split.pt")])
    assert not (tmp_path / "split.pt").exists()
    train_ae.main([*flags, "--out", str(tmp_path / "split.pt"), "--resume"])
    assert (tmp_path / "whole.pt").read_bytes() == (tmp_path / "split.pt").read_bytes()


def test_resume_with_other_epochs_is_refused(tmp_path, monkeypatch):
    """The schedule depends on the total number of steps, so a resume must keep --epochs."""
    flags = tiny_args(tmp_path, **{"--epochs": 3})
    out = str(tmp_path / "a.pt")
    with killed_after_epoch(monkeypatch, 0):
        train_ae.main([*flags, "--out", out])
    with pytest.raises(UserError, match="different settings.*epochs"):
        train_ae.main([*tiny_args(tmp_path, **{"--epochs": 5}), "--out", out, "--resume"])


def test_divergence_advice_names_the_base_rate_not_the_scheduled_one():
    model = ae.AutoEncoder(latent_dim=4, width=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)

    def nan_loss(recon, target):
        return ae.mse(recon, target) * float("nan")

    with pytest.raises(UserError, match=r"the learning rate 0.5 is too high .* with --lr 0.05$"):
        step = training.Step(training.Objective(nan_loss), optimizer, torch.device("cpu"), 4,
                             lr_at=lambda step: 0.005)  # late in a schedule: the current rate is 1% of --lr
        training.train_epoch(model, torch.zeros(8, 3, 64, 64, dtype=torch.uint8), step, generator=torch.Generator().manual_seed(0), epoch=0)


# ---------------------------------------------------------------- precision

def fake_cpu(monkeypatch, *, avx512_bf16=True, amx=True, vgg=3.0, autoencoder=2.0):
    """This CPU as reporting AVX-512 BF16 and AMX as given, on which bf16 measures `vgg` times as fast as fp32 for VGG's
    convolution and `autoencoder` times for the autoencoder's training pass."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(training, "bf16_speedup", lambda kind: {"vgg": vgg, "autoencoder": autoencoder}[kind])


def test_auto_precision_is_bf16_where_the_hardware_measures_faster_in_it(monkeypatch):
    cpu = torch.device("cpu")
    fake_cpu(monkeypatch)
    assert [training.resolve_precision("auto", cpu, loss) for loss in ("mse", "perceptual")] == ["bf16", "bf16-vgg"]
    fake_cpu(monkeypatch, vgg=0.6, autoencoder=0.8)  # e.g. the AVX-512 BF16 Xeon without AMX (docs/performance.md)
    assert [training.resolve_precision("auto", cpu, loss) for loss in ("mse", "perceptual")] == ["fp32", "fp32"]
    fake_cpu(monkeypatch, vgg=0.6, autoencoder=2.0)  # each rule reads its own measurement
    assert [training.resolve_precision("auto", cpu, loss) for loss in ("mse", "perceptual")] == ["bf16", "fp32"]
    fake_cpu(monkeypatch, vgg=3.0, autoencoder=0.8)
    assert [training.resolve_precision("auto", cpu, loss) for loss in ("mse", "perceptual")] == ["fp32", "bf16-vgg"]
    assert [training.resolve_precision(p, cpu, "mse") for p in ("fp32", "bf16-vgg", "bf16")] == ["fp32", "bf16-vgg", "bf16"]


# docs/performance.md: fast in bf16 is a CPU with AVX-512 BF16 or AMX on which the pass measures at least 1.2x faster in it
@pytest.mark.parametrize("avx512_bf16, amx", [(True, False), (False, True), (True, True)], ids=["avx512-bf16", "amx-only", "both"])
@pytest.mark.parametrize("kind", ["vgg", "autoencoder"])
def test_a_cpu_counts_as_fast_in_bf16_only_when_measured_faster(monkeypatch, avx512_bf16, amx, kind):
    other = "autoencoder" if kind == "vgg" else "vgg"
    for measured, fast in ((0.5, False), (1.19, False), (1.2, True), (1.21, True), (1.6, True)):  # 1.19-1.21 pin the bar
        fake_cpu(monkeypatch, avx512_bf16=avx512_bf16, amx=amx, **{kind: measured, other: 9.0 if fast else 0.1})
        assert training.bf16_fast(torch.device("cpu"), kind) is fast, measured


def test_a_cpu_without_native_bf16_is_never_fast_in_it(monkeypatch):
    for measured in (0.5, 1.21, 9.0):  # emulated, whatever a timing says
        fake_cpu(monkeypatch, avx512_bf16=False, amx=False, vgg=measured, autoencoder=measured)
        assert not training.bf16_fast(torch.device("cpu"), "vgg") and not training.bf16_fast(torch.device("cpu"), "autoencoder")
        assert [training.resolve_precision("auto", torch.device("cpu"), loss) for loss in ("mse", "perceptual")] == ["fp32", "fp32"]


def test_the_bf16_timing_measures_the_pass_it_names_and_draws_nothing(monkeypatch, real_bf16_speedup):
    real_bf16_speedup.cache_clear()
    built, real_init = [], ae.AutoEncoder.__init__
    monkeypatch.setattr(ae.AutoEncoder, "__init__", lambda self, *a, **k: built.append((a, k)) or real_init(self, *a, **k))
    state = torch.get_rng_state()
    speedups = [real_bf16_speedup("vgg"), real_bf16_speedup("autoencoder")]
    assert all(0 < v < math.inf for v in speedups) and torch.equal(torch.get_rng_state(), state)
    assert built == [((), {})]  # the default autoencoder, for its measurement alone
    real_bf16_speedup("autoencoder")
    assert built == [((), {})]  # measured once per process


def test_each_precision_casts_only_what_it_names(vgg_file):
    loss = training.make_loss("perceptual", str(vgg_file), ("relu1_2",))
    torch.manual_seed(0)
    model = ae.AutoEncoder(latent_dim=8, width=4)
    x = torch.rand(4, 3, 64, 64)
    seen = {}
    model.encoder[0].register_forward_hook(lambda m, i, o: seen.__setitem__("autoencoder", o.dtype))
    loss.vgg[0].register_forward_hook(lambda m, i, o: seen.__setitem__("vgg", o.dtype))
    values = {}
    for precision in ("fp32", "bf16-vgg", "bf16"):
        model.zero_grad()
        recon, values[precision] = training.forward_loss(model, x, loss, precision, torch.device("cpu"))
        values[precision].backward()
        assert recon.dtype == values[precision].dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 and p.dtype == torch.float32 for p in model.parameters())
        expected = {"fp32": (torch.float32, torch.float32), "bf16-vgg": (torch.float32, torch.bfloat16), "bf16": (torch.bfloat16, torch.bfloat16)}
        assert (seen["autoencoder"], seen["vgg"]) == expected[precision]
    for precision in ("bf16-vgg", "bf16"):  # bf16 really ran (not equal) and is close (3 significant bits lost, not more)
        assert values[precision].item() != values["fp32"].item()
        assert values[precision].item() == pytest.approx(values["fp32"].item(), rel=0.03)


def test_bf16_training_is_deterministic_and_recorded(tmp_path, vgg_file):
    runs = {}
    for name, precision in (("a", "bf16-vgg"), ("b", "bf16-vgg"), ("c", "fp32")):
        out = tmp_path / f"{name}.pt"
        train_ae.main(["--loss", "perceptual", "--vgg-weights", str(vgg_file), "--vgg-layers", "relu1_2", "--precision", precision,
                       "--out", str(out), *tiny_args(tmp_path, **{"--synthetic-size": 32, "--n-test": 16})])
        runs[name] = load_ae(out)
    assert runs["a"][1]["config"]["precision"] == "bf16-vgg" and runs["c"][1]["config"]["precision"] == "fp32"
    a, b, c = (runs[k][0].state_dict() for k in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_auto_trains_the_mse_autoencoder_in_bf16_where_it_measures_fast_and_fits_curves_so_too(monkeypatch, tmp_path):
    import fit_curve

    fake_cpu(monkeypatch, autoencoder=2.0)
    flags = tiny_args(tmp_path, **{"--synthetic-size": 32, "--n-test": 16})
    for name, precision in (("auto", []), ("bf16", ["--precision", "bf16"]), ("fp32", ["--precision", "fp32"])):
        train_ae.main(["--loss", "mse", *precision, "--out", str(tmp_path / f"{name}.pt"), *flags])
    (auto, cfg), (bf16, _), (fp32, _) = (load_ae(tmp_path / f"{n}.pt") for n in ("auto", "bf16", "fp32"))
    assert cfg["config"]["precision"] == "bf16"  # recorded as what ran
    assert all(torch.equal(v, bf16.state_dict()[k]) for k, v in auto.state_dict().items())  # and it is what ran
    assert not all(torch.equal(v, fp32.state_dict()[k]) for k, v in auto.state_dict().items() if v.is_floating_point())
    fit_curve.main(["--a", str(tmp_path / "auto.pt"), "--b", str(tmp_path / "fp32.pt"), "--epochs", "1", "--batch-size", "16",
                    "--bn-images", "16", "--out", str(tmp_path / "curve.pt")])
    assert torch.load(tmp_path / "curve.pt", weights_only=True)["config"]["precision"] == "bf16"
    fake_cpu(monkeypatch, autoencoder=1.1)
    train_ae.main(["--loss", "mse", "--out", str(tmp_path / "slow.pt"), *flags])
    assert load_ae(tmp_path / "slow.pt")[1]["config"]["precision"] == "fp32"


def test_a_resumed_run_keeps_the_precision_auto_chose_at_its_start(monkeypatch, tmp_path):
    flags = tiny_args(tmp_path, **{"--synthetic-size": 32, "--n-test": 16, "--epochs": 2})
    train_ae.main(["--loss", "mse", "--precision", "bf16", "--out", str(tmp_path / "whole.pt"), *flags])
    fake_cpu(monkeypatch, autoencoder=2.0)  # auto: bf16 at the start ...
    with killed_after_epoch(monkeypatch, 0):
        train_ae.main(["--loss", "mse", "--out", str(tmp_path / "run.pt"), *flags])
    fake_cpu(monkeypatch, autoencoder=1.1)  # ... and fp32 by the time it resumes (a timing near the bar)
    train_ae.main(["--loss", "mse", "--out", str(tmp_path / "run.pt"), "--resume", *flags])
    (run, ckpt), (whole, _) = load_ae(tmp_path / "run.pt"), load_ae(tmp_path / "whole.pt")
    assert ckpt["config"]["precision"] == "bf16"
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in run.state_dict().items())


# ---------------------------------------------------------------- snapshots along training

def test_snapshots_land_evenly_per_epoch_and_change_nothing(tmp_path):
    """64 images at batch 16: 4 steps an epoch; 3 snapshots an epoch fall after steps 1, 2 and 4."""
    flags = tiny_args(tmp_path, **{"--epochs": 2})
    train_ae.main([*flags, "--out", str(tmp_path / "plain.pt")])
    out = tmp_path / "snap.pt"
    train_ae.main([*flags, "--out", str(out), "--snapshots", "3"])
    assert snapshots.steps(4, 3) == [1, 2, 4] and snapshots.steps(4, 4) == [1, 2, 3, 4]
    folder = tmp_path / "snap.snapshots"
    assert sorted(p.name for p in folder.iterdir()) == [f"step{s:06d}.pt" for s in (1, 2, 4, 5, 6, 8)]
    # snapshots change nothing: the final checkpoint is the same, byte for byte
    assert out.read_bytes() == (tmp_path / "plain.pt").read_bytes()
    final, ckpt = load_ae(out)
    for step in (1, 2, 4, 5, 6, 8):
        snap = load_ae(folder / f"step{step:06d}.pt")[1]["config"]
        assert snap["snapshot"] == {"epoch": step / 4, "step": step, "of": str(out)}
        assert {k: v for k, v in snap.items() if k != "snapshot"} == ckpt["config"]
    last = load_ae(folder / "step000008.pt")[0].state_dict()
    assert all(torch.equal(last[k], v) for k, v in final.state_dict().items())  # the last one is the final model
    first = load_ae(folder / "step000001.pt")[0].state_dict()
    assert not torch.equal(first["encoder.0.weight"], last["encoder.0.weight"])
    assert json.loads(out.with_suffix(".json").read_text())["snapshots"] == {"folder": str(folder), "per_epoch": 3}


def test_snapshots_survive_a_resume_and_too_many_are_refused(tmp_path, monkeypatch):
    flags = [*tiny_args(tmp_path, **{"--epochs": 3}), "--snapshots", "2"]
    train_ae.main([*flags, "--out", str(tmp_path / "whole.pt")])
    out = tmp_path / "split.pt"
    with killed_after_epoch(monkeypatch, 0):
        train_ae.main([*flags, "--out", str(out)])
    folder = tmp_path / "split.snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["step000002.pt", "step000004.pt"]
    kept = (folder / "step000002.pt").stat().st_mtime_ns
    train_ae.main([*flags, "--out", str(out), "--resume"])
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"step{s:06d}.pt" for s in (2, 4, 6, 8, 10, 12)]
    assert (folder / "step000002.pt").stat().st_mtime_ns == kept  # the finished epoch's snapshots were not redone
    assert out.read_bytes() == (tmp_path / "whole.pt").read_bytes()
    for name in names:
        a, b = weights(folder / name), weights(tmp_path / "whole.snapshots" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="--snapshots 5 is more than the 4 optimiser steps"):
        train_ae.main([*tiny_args(tmp_path), "--out", str(tmp_path / "x.pt"), "--snapshots", "5"])


def test_noise_reaches_the_input_only_and_l1_adds_exactly_lambda_mean_abs_code():
    class Echo(torch.nn.Module):  # reconstructs exactly what it sees: its loss is the distance from input to target
        def forward(self, x):
            return x

    torch.manual_seed(0)
    x, cpu = torch.rand(4, 3, 64, 64), torch.device("cpu")
    objective = training.Objective(ae.mse, noise=0.3)
    _, loss = training.forward_loss(Echo(), x, objective, "fp32", cpu, generator=torch.Generator().manual_seed(5))
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    assert loss > 0.01 and torch.allclose(loss, ae.mse(noisy, x))  # the clipped noisy input against the clean target
    model = ae.AutoEncoder(latent_dim=8, width=4).eval()
    plain = training.forward_loss(model, x, ae.mse, "fp32", cpu)[1]
    sparse = training.forward_loss(model, x, training.Objective(ae.mse, l1=0.5), "fp32", cpu)[1]
    assert torch.allclose(sparse - plain, 0.5 * model.encode(x).abs().mean())
    images = (x * 255).round().to(torch.uint8)  # as the data module stores them
    per_image = training.per_image_losses(model, images, training.Objective(ae.mse, l1=0.5), batch_size=4, device=cpu)
    assert torch.allclose(per_image["loss"] - per_image["mse"], 0.5 * model.encode(images.float() / 255).abs().mean(1), atol=1e-6)
    assert set(per_image) == {"loss", "mse", "code_abs", "code_zero"}


def test_denoising_and_sparse_training_is_seeded_recorded_and_differs_from_plain(tmp_path):
    runs = {}
    for name, flags in (("a", ["--noise", "0.2"]), ("b", ["--noise", "0.2"]), ("plain", []), ("sparse", ["--l1", "0.1"])):
        train_ae.main([*flags, "--out", str(tmp_path / f"{name}.pt"), *tiny_args(tmp_path)])
        runs[name] = weights(tmp_path / f"{name}.pt")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    for other in ("plain", "sparse"):
        assert not all(torch.equal(runs["a"][k], runs[other][k]) for k in runs["a"] if runs["a"][k].is_floating_point())
    config = load_ae(tmp_path / "a.pt")[1]["config"]
    assert (config["noise"], config["l1"], ae.group_of(config)) == (0.2, 0.0, "mse+noise=0.2")
    assert ae.group_of({"loss": "mse"}) == "mse"  # a checkpoint written before the flags: noise and l1 are 0
    assert run_study.parse_group("perceptual+noise=0.1+l1=1e-3") == {"loss": "perceptual", "noise": 0.1, "l1": 0.001}
    with pytest.raises(UserError, match="cannot read the loss group"):
        run_study.parse_group("mse+dropout=0.1")


def test_evaluation_targets_cut_into_batches_give_the_losses_of_recomputed_targets(vgg_file):
    loss = training.make_loss("perceptual", str(vgg_file), ("relu1_2",))
    images, cpu = data.synthetic_faces(0, 12), torch.device("cpu")
    torch.manual_seed(0)
    model = ae.AutoEncoder(latent_dim=8, width=4)
    features = training.target_features(loss, {"test": images}, 5, cpu)["test"]
    assert [len(batch[0]) for batch in features] == [5, 5, 2]  # one entry per evaluation batch
    recomputed = training.per_image_losses(model, images, loss, batch_size=5, device=cpu)["loss"]
    cached = training.per_image_losses(model, images, loss, batch_size=5, device=cpu, target_features=features)["loss"]
    assert torch.allclose(cached, recomputed, rtol=1e-5)
    other = training.target_features(loss, {"test": images.flip(0)}, 5, cpu)["test"]  # another image's targets
    assert not torch.allclose(training.per_image_losses(model, images, loss, batch_size=5, device=cpu, target_features=other)["loss"],
                              recomputed, rtol=1e-3)
    assert training.target_features(ae.mse, {"test": images}, 5, cpu) == {"test": None}
