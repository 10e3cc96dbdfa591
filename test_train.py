"""Tests of endpoint training (train_ae.py) and the perceptual loss (ae.py)."""
import json
import urllib.error

import pytest
import torch
from PIL import Image

import ae
import data
import train_ae
import training
from conftest import tiny_args
from files import UserError, load_ae


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
    loss = ae.PerceptualLoss(str(vgg_file))
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
    a, b = ae.PerceptualLoss("random"), ae.PerceptualLoss("random")
    assert a.weights_name == "random"
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_imagenet_weights_offline_say_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="vgg16-397923af.pth") as err:
        ae.PerceptualLoss("imagenet")
    assert str(tmp_path) in str(err.value)


def test_missing_vgg_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ae.PerceptualLoss(str(tmp_path / "nope.pth"))


def test_cached_target_features_give_the_same_losses(vgg_file):
    loss = ae.PerceptualLoss(str(vgg_file))
    torch.manual_seed(0)
    model = ae.AutoEncoder(latent_dim=8, width=4)
    images = (torch.rand(10, 3, 64, 64) * 255).to(torch.uint8)
    common = dict(batch_size=4, device=torch.device("cpu"))
    fresh = training.per_image_losses(model, images, loss, **common)
    with torch.inference_mode():
        cached = [loss.features(x) for x in data.batches(images, 4, memory_format=torch.channels_last)]
    reused = training.per_image_losses(model, images, loss, target_features=cached, **common)
    assert torch.equal(fresh["loss"], reused["loss"]) and fresh["loss"].min() > 0
