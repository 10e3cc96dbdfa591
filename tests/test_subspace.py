"""Tests of the line of autoencoders learned from scratch (train_ae.py --subspace, lib/subspace.py; Wortsman et al. 2021)."""
import json
import math

import pytest
import torch
import torch.nn as nn

import ae
import curves
import data
import train_ae
from conftest import killed_after_epoch, tiny_args
from lib import cli, subspace, training
from lib.files import SUBSPACE_FORMAT, UserError, load_ae, load_checkpoint

CPU = torch.device("cpu")
ALPHA_FILES = ("-a0.pt", "-a0.5.pt", "-a1.pt")


def flags(tmp, **overrides):
    return ["--subspace", "line", *tiny_args(tmp, **{"--n-test": 16, "--epochs": 3, "--batch-size": 8, "--lr": 3e-3, **overrides})]


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A line trained for 3 epochs with the default output names (in a fresh folder): that folder."""
    tmp = tmp_path_factory.mktemp("line")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        train_ae.main(["--seed", "0", *flags(tmp)])
    return tmp


def toy_net(curve: str, bends: list[dict]) -> curves.CurveNet:
    """A CurveNet of a conv (1 weight), a BatchNorm and a linear layer (2 weights), its bends set to `bends`:
    {"conv": c, "linear": (l1, l2)}, with biases and BatchNorm parameters that the cosine term must ignore."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(2, 1))
    net = curves.CurveNet(model, curve, len(bends), fix_ends=False)
    for j, b in enumerate(bends):
        net.import_endpoint({"0.weight": torch.tensor(float(b["conv"])).reshape(1, 1, 1, 1), "0.bias": torch.tensor([100.0 * (-1) ** j]),
                             "1.weight": torch.tensor([50.0]), "1.bias": torch.tensor([-7.0 * j]),
                             "3.weight": torch.tensor([list(map(float, b["linear"]))]), "3.bias": torch.tensor([3.0 + j])}, j)
    return net


W0, W1, W2 = {"conv": 3, "linear": (0, 4)}, {"conv": 1, "linear": (2, 2)}, {"conv": 0, "linear": (0, 1)}


def test_the_cosine_term_is_the_squared_cosine_of_the_weights_alone():
    # w_0 = (3, 0, 4), w_1 = (1, 2, 2): w_0.w_1 = 11, |w_0|^2 = 25, |w_1|^2 = 9; biases and BatchNorm left out
    net = toy_net("polychain", [W0, W1])
    value = subspace.cosine_sq(net)
    assert value.item() == pytest.approx(121 / 225, rel=1e-12)
    value.backward()
    a, b = torch.tensor([3.0, 0, 4]), torch.tensor([1.0, 2, 2])
    # d/da (a.b)^2 / (|a|^2 |b|^2) = 2 (a.b) b / (|a|^2 |b|^2) - 2 (a.b)^2 a / (|a|^4 |b|^2)
    grad_a = 2 * 11 * b / 225 - 2 * 121 * a / (625 * 9)
    conv, linear = net.net[0], net.net[3]
    assert torch.allclose(torch.cat([conv.weight_0.grad.reshape(-1), linear.weight_0.grad.reshape(-1)]), grad_a, atol=1e-7)
    for p in (conv.bias_0, conv.bias_1, net.net[1].weight_0, net.net[1].bias_1, linear.bias_0):
        assert p.grad is None or not p.grad.any()
    # Bezier: the mean over its three pairs; w_2 = (0, 0, 1): w_0.w_2 = 4, w_1.w_2 = 2
    net = toy_net("bezier", [W0, W2, W1])
    assert subspace.cosine_sq(net).item() == pytest.approx((121 / 225 + 16 / 25 + 4 / 9) / 3, rel=1e-12)


def test_the_bends_start_from_the_initialisations_of_seeds_s_s_plus_1_and_s_plus_2():
    net = subspace.build("bezier", 8, 4, seed=5)
    names = [name for name, _ in ae.AutoEncoder(8, 4).named_parameters()]
    starts = {}
    for seed in (5, 6, 7):
        torch.manual_seed(seed)
        state = ae.AutoEncoder(8, 4).state_dict()
        starts[seed] = torch.cat([state[name].reshape(-1) for name in names])
    # bend 0 is alpha = 0 (seed S), bend 2 is alpha = 1 (S+1), bend 1 the middle (S+2)
    assert torch.equal(net.bend_vector(0).detach(), starts[5])
    assert torch.equal(net.bend_vector(2).detach(), starts[6])
    assert torch.equal(net.bend_vector(1).detach(), starts[7])
    assert not torch.equal(starts[5], starts[6])
    assert all(p.requires_grad for p in net.parameters())


def test_outputs_land_where_help_says_and_every_bend_trains(line):
    folder = line / "runs/ae"
    for name in ("mse_s0-line.pt", "mse_s0-line.json", "mse_s0-line.png", *(f"mse_s0-line{a}" for a in ALPHA_FILES)):
        assert (folder / name).is_file(), name
    assert not (folder / "mse_s0.pt").exists() and not list(folder.glob("*.resume.pt"))
    ckpt = load_checkpoint(folder / "mse_s0-line.pt", SUBSPACE_FORMAT, ("state_dict", "config", "history"))
    history = ckpt["history"]
    losses = [h["train_loss"] for h in history]  # the group's loss alone, without the cosine term
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[2] < 0.95 * losses[0]
    # no bend is fixed: every tensor of both ends moved away from its initialisation
    start = subspace.build("line", 8, 4, seed=0).state_dict()
    params = [k for k in start if "running" not in k and "num_batches" not in k]
    assert {k[-2:] for k in params} == {"_0", "_1"}
    moved = [k for k in params if not torch.equal(start[k], ckpt["state_dict"][k])]
    assert moved == params


def test_the_networks_at_alpha_are_the_line_there_with_batchnorm_recomputed_there(line):
    folder = line / "runs/ae"
    state = load_checkpoint(folder / "mse_s0-line.pt", SUBSPACE_FORMAT)["state_dict"]
    result = json.loads((folder / "mse_s0-line.json").read_text())
    train_images = data.load_split(result["config"]["data"], "train")
    test_images = data.load_split(result["config"]["data"], "test")
    means = []
    for alpha, suffix, point in zip((0.0, 0.5, 1.0), ALPHA_FILES, result["alphas"]):
        model, ckpt = load_ae(folder / f"mse_s0-line{suffix}")
        assert ckpt["config"]["subspace_point"]["alpha"] == point["alpha"] == alpha
        for name, p in model.named_parameters():
            assert torch.allclose(p, (1 - alpha) * state[f"net.{name}_0"] + alpha * state[f"net.{name}_1"], atol=1e-6)
        # the first BatchNorm's running mean is the mean of its input over all training images (64 < 2,000)
        with torch.no_grad():
            conv_out = model.encoder[0](train_images.float() / 255)
        assert torch.allclose(model.encoder[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
        means.append(model.encoder[1].running_mean)
        measured = training.evaluate(model, test_images, ae.mse, batch_size=64, device=CPU)
        assert measured["loss"] == pytest.approx(point["test_loss"], rel=1e-5)
    assert not torch.allclose(means[0], means[2])


def test_the_ensemble_of_the_ends_is_the_loss_of_their_mean_reconstruction(line):
    folder = line / "runs/ae"
    result = json.loads((folder / "mse_s0-line.json").read_text())
    test_images = data.load_split(result["config"]["data"], "test")
    x = test_images.float() / 255
    with torch.no_grad():
        recon = [load_ae(folder / f"mse_s0-line{suffix}")[0].eval()(x) for suffix in ("-a0.pt", "-a1.pt")]
    per_image = ((recon[0] + recon[1]) / 2 - x).pow(2).mean(dim=(1, 2, 3)).double()
    ensemble = result["ensemble_of_ends"]
    assert ensemble["test_loss"] == pytest.approx(per_image.mean().item(), rel=1e-5)
    assert ensemble["test_loss_se"] == pytest.approx(per_image.std().item() / math.sqrt(len(per_image)), rel=1e-4)
    assert ensemble["member_test_loss"] == pytest.approx([result["alphas"][0]["test_loss"], result["alphas"][2]["test_loss"]], rel=1e-5)


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def test_ensemble_scores_on_a_case_worked_by_hand():
    # images of constant 0, 0.2 and 0.4; members reconstruct 0.2 and 0.6 everywhere, their mean 0.4
    images = torch.stack([torch.full((3, 64, 64), v, dtype=torch.uint8) for v in (0, 51, 102)])
    scores = subspace.ensemble_scores([Constant(0.2), Constant(0.6)], images, ae.mse, batch_size=2, device=CPU)
    per_image = torch.tensor([0.16, 0.04, 0.0], dtype=torch.float64)
    assert scores["test_loss"] == pytest.approx(0.2 / 3, rel=1e-5) == scores["test_mse"]
    assert scores["test_loss_se"] == pytest.approx(per_image.std().item() / math.sqrt(3), rel=1e-4)
    members = [subspace.ensemble_scores([Constant(c)], images, ae.mse, batch_size=2, device=CPU)["test_loss"] for c in (0.2, 0.6)]
    assert members == pytest.approx([0.08 / 3, 0.56 / 3], rel=1e-5)  # the ensemble beats both members here


def test_a_denoising_ensemble_reconstructs_the_noisy_input_and_its_mse_the_clean_one():
    torch.manual_seed(0)
    images = (torch.rand(4, 3, 64, 64) * 255).to(torch.uint8)
    x = images.float() / 255
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(training.EVAL_NOISE_SEED))).clamp(0, 1)
    scores = subspace.ensemble_scores([nn.Identity(), Constant(0.5)], images, training.Objective(ae.mse, noise=0.1),
                                      batch_size=4, device=CPU)
    assert scores["test_loss"] == pytest.approx(((noisy + 0.5) / 2 - x).pow(2).mean().item(), rel=1e-5)
    assert scores["test_mse"] == pytest.approx(((x + 0.5) / 2 - x).pow(2).mean().item(), rel=1e-5)
    assert scores["test_loss"] > scores["test_mse"]


def test_same_seed_same_line_and_resume_ends_on_the_same_bytes(tmp_path, monkeypatch):
    """Two runs with the same seed, and a third killed after its first epoch and resumed, write the same files."""
    one, two, three = (tmp_path / d for d in ("one", "two", "three"))
    short = flags(tmp_path, **{"--epochs": 2})
    for folder in (one, two):
        train_ae.main([*short, "--out", str(folder / "x.pt")])
    with killed_after_epoch(monkeypatch, 0):
        train_ae.main([*short, "--out", str(three / "x.pt")])
    assert (three / "x.resume.pt").is_file() and not (three / "x.pt").exists() and not (three / "x-a0.pt").exists()
    train_ae.main([*short, "--out", str(three / "x.pt"), "--resume"])
    for name in ("x.pt", *(f"x{a}" for a in ALPHA_FILES)):
        assert (one / name).read_bytes() == (two / name).read_bytes() == (three / name).read_bytes(), name
    assert not (three / "x.resume.pt").exists()


def test_a_denoising_sparse_bezier_trains_its_middle_bend_and_snapshots_are_refused(tmp_path, capsys):
    out = tmp_path / "b.pt"
    train_ae.main(["--subspace", "bezier", "--noise", "0.1", "--l1", "1e-3", *tiny_args(tmp_path, **{"--n-test": 16}), "--out", str(out)])
    ckpt = load_checkpoint(out, SUBSPACE_FORMAT, ("state_dict",))
    assert ckpt["config"]["num_bends"] == 3 and ckpt["config"]["init_seeds"] == [0, 2, 1]
    start = subspace.build("bezier", 8, 4, seed=0).state_dict()
    assert not torch.equal(start["net.encoder.0.weight_1"], ckpt["state_dict"]["net.encoder.0.weight_1"])
    bad = tmp_path / "bad"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run(train_ae.main, ["--subspace", "line", "--snapshots", "1", *tiny_args(tmp_path), "--out", str(bad / "x.pt")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--snapshots is not supported with --subspace" in err and err.strip().count("\n") == 0
    assert not bad.exists()
    with pytest.raises(UserError, match="does not exist"):
        train_ae.main(["--subspace", "line", "--loss", "perceptual", "--vgg-weights", str(tmp_path / "no.pth"), *tiny_args(tmp_path),
                       "--out", str(bad / "x.pt")])
    assert not bad.exists()
    with pytest.raises(SystemExit):  # a negative BETA is refused by its type
        train_ae.parse_args(["--subspace", "line", "--cosine-reg", "-1"])
