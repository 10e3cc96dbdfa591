"""Tests of ensembles along curves and of FGE (ensemble.py)."""
import json

import pytest
import torch
from PIL import Image

import ae
import curves
import data
import ensemble
import fit_curve
import training
from conftest import tiny_args
from files import UserError, load_ae

CPU = torch.device("cpu")
RUN_FLAGS = ["--points", "3", "--k", "3", "--fge-cycles", "2", "--cycle-steps", "4", "--fge-lr1", "3e-3",
             "--bn-images", "32", "--test-images", "12", "--eval-batch-size", "64"]


@pytest.fixture(scope="module")
def curve(endpoints, tmp_path_factory):
    """A Bezier curve fitted for 1 epoch between the two conftest endpoints."""
    out = tmp_path_factory.mktemp("ens_curve") / "curve.pt"
    fit_curve.main(["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--epochs", "1", "--lr", "3e-3",
                    "--batch-size", "16", "--bn-images", "32", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def run(curve, endpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens_out")
    result = ensemble.main(["--ckpt", str(curve), "--endpoints", *map(str, endpoints), *RUN_FLAGS, "--out", str(out)])
    return out, result


@pytest.fixture(scope="module")
def tiny(endpoints):
    """Evaluation settings on the endpoints' tiny data."""
    config = load_ae(endpoints[0])[1]["config"]
    train_images = data.load_split(config["data"], "train")
    ev = {"images": data.load_split(config["data"], "test")[:12], "bn_images": train_images[:32], "loss_fn": ae.mse,
          "batch_size": 64, "device": CPU, "features": None}
    return train_images, ev


def test_fge_rate_is_the_papers_triangle():
    # c = 4, alpha1 = 0.1 (high), alpha2 = 0.01 (low): t(i) = 1/4, 1/2, 3/4, 1, 1/4, ...
    hand = [0.055, 0.01, 0.055, 0.1, 0.055, 0.01]  # e.g. i=1: (1 - 1/2) 0.1 + (1/2) 0.01 = 0.055
    assert [ensemble.fge_lr(i, 4, 0.1, 0.01) for i in range(1, 7)] == pytest.approx(hand)
    hand6 = [0.07, 0.04, 0.01, 0.04, 0.07, 0.1]  # c = 6, e.g. i=2: t=1/3: (1/3) 0.1 + (2/3) 0.01 = 0.04
    assert [ensemble.fge_lr(i, 6, 0.1, 0.01) for i in range(1, 7)] == pytest.approx(hand6)
    assert [i for i in range(1, 13) if ensemble.fge_collects(i, 4)] == [2, 6, 10]
    assert ensemble.sse_lr(1, 4, 0.1) == pytest.approx(0.1) and ensemble.sse_lr(3, 4, 0.1) == pytest.approx(0.05)


def test_fge_training_follows_the_schedule_and_collects_once_per_cycle_at_the_lowest_rate(endpoints, tiny):
    train_images, _ = tiny
    cycle, cycles, lr1, lr2 = 6, 3, 3e-3, 1e-4  # 18 steps over 4 steps per epoch: collections fall mid-epoch and across epochs
    fit = {"batch_size": 16, "seed": 0, "first_epoch": 3, "device": CPU, "desc": "fge"}
    collected = []
    model = load_ae(endpoints[0])[0]
    rates = ensemble.train_steps(model, train_images, ae.mse, steps=cycle * cycles, lr_at=lambda i: ensemble.fge_lr(i, cycle, lr1, lr2),
                                 collect_at=lambda i: ensemble.fge_collects(i, cycle),
                                 on_collect=lambda i, m: collected.append((i, {k: v.clone() for k, v in m.state_dict().items()})), **fit)
    assert len(rates) == cycle * cycles
    assert rates == pytest.approx([ensemble.fge_lr(i, cycle, lr1, lr2) for i in range(1, cycle * cycles + 1)])
    assert [i for i, _ in collected] == [3, 9, 15]  # exactly one per cycle, at its middle
    assert all(rates[i - 1] == pytest.approx(lr2) == pytest.approx(min(rates)) for i, _ in collected)
    assert max(rates) == pytest.approx(lr1)
    # the first collected weights are those right after iteration 3: replay exactly 3 steps
    replay = load_ae(endpoints[0])[0]
    last = []
    ensemble.train_steps(replay, train_images, ae.mse, steps=3, lr_at=lambda i: ensemble.fge_lr(i, cycle, lr1, lr2),
                         collect_at=lambda i: i == 3, on_collect=lambda i, m: last.append(i), **fit)
    assert last == [3]
    assert all(torch.equal(replay.state_dict()[k], collected[0][1][k]) for k in collected[0][1])
    assert not torch.equal(replay.state_dict()["encoder.0.weight"], collected[1][1]["encoder.0.weight"])


def test_two_identical_members_are_one_model(endpoints, tiny):
    _, ev = tiny
    one = ensemble.member(load_ae(endpoints[0])[0], ev)
    single = ensemble.ensemble_of([one]).score(ev)
    double = ensemble.Ensemble().add(one).add(ensemble.member(load_ae(endpoints[0])[0], ev))
    assert torch.equal(double.recon_sum / 2, one["recon"])
    pair = double.score(ev)
    for key in ("test_loss", "test_mse", "test_psnr"):
        assert pair[key] == single[key]
    assert pair["diversity"] == 0 and pair["weight_cosine"] == pytest.approx(1) and pair["weight_distance"] == pytest.approx(0, abs=1e-6)
    assert single["diversity"] is None and single["test_loss"] == pytest.approx(one["test_loss"])


def test_ensemble_mse_is_at_most_the_members_mean_and_the_gap_is_the_diversity(endpoints, tiny):
    _, ev = tiny
    members = [ensemble.member(load_ae(p)[0], ev) for p in endpoints]
    torch.manual_seed(5)
    members.append(ensemble.member(ae.AutoEncoder(latent_dim=8, width=4), ev))  # an untrained, very different member
    for n in (2, 3):
        s = ensemble.ensemble_of(members[:n]).score(ev)
        mean_mse = sum(m["test_mse"] for m in members[:n]) / n
        assert s["test_mse"] < mean_mse and s["member_test_mse"] == pytest.approx(mean_mse)
        # ambiguity decomposition: mean member MSE - ensemble MSE = mean_i |r_i - mean|^2 = diversity (n-1) / (2n)
        assert mean_mse - s["test_mse"] == pytest.approx(s["diversity"] * (n - 1) / (2 * n), rel=1e-5)
        r = [m["recon"] for m in members[:n]]
        direct = sum((r[i] - r[j]).pow(2).mean().item() for i in range(n) for j in range(i + 1, n)) / (n * (n - 1) / 2)
        assert s["diversity"] == pytest.approx(direct, rel=1e-5)
        w = [m["weights"] for m in members[:n]]
        cos = sum(torch.nn.functional.cosine_similarity(w[i], w[j], dim=0).item() for i in range(n) for j in range(i + 1, n))
        assert s["weight_cosine"] == pytest.approx(cos / (n * (n - 1) / 2), rel=1e-6)


def test_figure_2c_starts_at_the_endpoints_own_loss(run, endpoints, tiny):
    _, result = run
    _, ev = tiny
    f = result["fig2c"]
    assert f["t"] == [0.0, 0.5, 1.0]
    model = load_ae(endpoints[0])[0]
    curves.update_bn(model, data.batches(ev["bn_images"], 64))
    own = training.evaluate(model, ev["images"], ae.mse, batch_size=64, device=CPU)["loss"]
    assert f["ensemble"]["test_loss"][0] == pytest.approx(f["single"]["test_loss"][0], rel=1e-6)
    assert f["single"]["test_loss"][0] == pytest.approx(own, rel=1e-5)
    assert f["diversity"][0] == pytest.approx(0, abs=1e-12) and f["diversity"][-1] > 0
    # at t=1 the pair is the two endpoints: the same as the endpoint ensemble of 2 and the curve ensemble of 2
    two = result["methods"]["endpoints"]["growth"][1]
    assert f["ensemble"]["test_loss"][-1] == pytest.approx(two["test_loss"], rel=1e-5)
    assert result["methods"]["curve"]["growth"][0]["test_loss"] == pytest.approx(two["test_loss"], rel=1e-5)


def test_end_to_end_writes_json_and_pngs_with_budgets(run, curve):
    out, result = run
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["format"] == "aemc-ensemble-v1" and saved == json.loads(json.dumps(result))
    for key in ("definition", "curve_ckpt", "loss", "endpoints", "fge_from", "settings", "budget", "fig2c", "methods", "table", "files"):
        assert key in saved, key
    assert set(saved["methods"]) == {"curve", "endpoints", "fge", "sse", "longer"}
    assert [g["members"] for g in saved["methods"]["curve"]["growth"]] == [2, 3]
    assert saved["methods"]["curve"]["growth"][-1]["t"] == [0.0, 0.5, 1.0]
    fge = saved["methods"]["fge"]
    assert fge["collected_at"] == [2, 6] and fge["lr_at_collection"] == pytest.approx([3e-4, 3e-4])
    assert saved["methods"]["sse"]["collected_at"] == [4, 8] and saved["methods"]["longer"]["collected_at"] == [8]
    # budgets: endpoints 3 epochs each, curve 1 epoch, FGE 8 steps of 4 per epoch = 2 epochs
    assert saved["settings"]["fge"]["steps_per_epoch"] == 4
    assert [g["budget_epochs"] for g in saved["methods"]["endpoints"]["growth"]] == [3, 6]
    assert saved["budget"]["curve"]["epochs"] == 7 and saved["budget"]["fge"]["epochs"] == 5
    assert all(g["budget_epochs"] == 5 for name in ("fge", "sse", "longer") for g in saved["methods"][name]["growth"])
    rows = saved["table"]
    assert [r["method"] for r in rows] == ["endpoints", "endpoints", "curve", "fge", "sse", "longer"]
    for r in rows:
        assert {"method", "budget_epochs", "members", "test_loss", "test_mse", "test_psnr", "diversity", "weight_cosine"} <= set(r)
        assert (r["diversity"] is None) == (r["members"] == 1)
    for name in ("members_png", "fig2c_png"):
        with Image.open(out / saved["files"][name]) as png:
            assert png.format == "PNG" and png.size[0] > 400 and png.size[1] > 200


def test_bad_input_is_refused_in_one_line(curve, endpoints, tmp_path):
    other = tmp_path / "wide.pt"
    import train_ae
    train_ae.main(["--seed", "2", "--out", str(other), *tiny_args(tmp_path, **{"--width": 6})])
    base = ["--ckpt", str(curve), *RUN_FLAGS, "--out", str(tmp_path / "e")]
    with pytest.raises(UserError, match="architecture") as e:
        ensemble.main([*base, "--endpoints", str(endpoints[0]), str(other)])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="even"):
        ensemble.main([*base, "--cycle-steps", "5"])
    with pytest.raises(UserError, match="below"):
        ensemble.main([*base, "--fge-lr2", "1e-2"])
    with pytest.raises(UserError, match="repeats"):
        ensemble.main([*base, "--endpoints", str(endpoints[0]), str(endpoints[0])])
    assert not (tmp_path / "e").exists()
