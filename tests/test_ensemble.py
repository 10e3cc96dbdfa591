"""Tests of ensembles along curves and of FGE (ensemble.py)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ae
import curves
import data
import ensemble
import fit_curve
from lib import training
from conftest import tiny_args
from lib.files import UserError, load_ae

CPU = torch.device("cpu")
RUN_FLAGS = ["--points", "3", "--k", "3", "--fge-cycles", "2", "--cycle-steps", "4", "--fge-lr1", "3e-3",
             "--bn-images", "32", "--test-images", "12", "--eval-batch-size", "64",
             "--select", "uniform", "greedy", "diversity", "--lambdas", "0.5", "50", "--pool-points", "5", "--valid-images", "10"]


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


def test_greedy_takes_the_best_member_then_the_lowest_ensemble_loss_and_lambda_buys_diversity():
    single = [1.0, 1.2, 1.1, 1.3]
    loss = lambda members: float(np.mean([single[i] for i in members]))  # noqa: E731  (no gain from ensembling)
    d = np.zeros((4, 4))
    d[0, 1], d[0, 2], d[0, 3] = 0.2, 0.1, 0.5
    d = d + d.T
    # after member 0: gain(c) = -loss({0, c}) + lambda d(0, c): c=2 gives -1.05 + 0.1 lambda, c=3 gives -1.15 + 0.5 lambda,
    # c=1 gives -1.1 + 0.2 lambda, so 2 wins below lambda = 0.25 and 3 above it
    assert ensemble.select_members(single, loss, d, 2, 0.0, (1.0, 1.0)) == [0, 2]
    assert ensemble.select_members(single, loss, d, 2, 0.2, (1.0, 1.0)) == [0, 2]
    assert ensemble.select_members(single, loss, d, 2, 0.3, (1.0, 1.0)) == [0, 3]
    # a loss scale of 2 halves the loss term: the break-even lambda falls to 0.125
    assert ensemble.select_members(single, loss, d, 2, 0.2, (2.0, 1.0)) == [0, 3]
    assert len(set(ensemble.select_members(single, loss, d, 4, 0.3, (1.0, 1.0)))) == 4  # members are distinct
    assert ensemble.pool_ts(5, 4) == pytest.approx([0.25, 1 / 3, 0.5, 2 / 3, 0.75])  # uniform's t are in the pool


def test_selection_uses_validation_images_only_and_uniform_is_the_curve_ensemble(run, curve, endpoints, tmp_path, monkeypatch):
    out, result = run
    sel = result["selection"]
    rows = sel["ensembles"]
    assert set(rows) == {"uniform", "independent", "greedy", "diversity lambda=0.5", "diversity lambda=50"}
    assert rows["uniform"]["members_chosen"] == ["endpoint mse_s0", "curve t=0.500", "endpoint mse_s1"]
    # uniform K=3 is the curve ensemble at t = 0, 1/2, 1, computed by the other code path
    assert rows["uniform"]["test_loss"] == pytest.approx(result["methods"]["curve"]["growth"][-1]["test_loss"], rel=1e-5)
    for label, row in rows.items():
        assert row["members"] == len(set(row["members_chosen"]))
        if label != "uniform":  # the paired difference is the difference of the means
            assert row["vs_uniform"]["diff"] == pytest.approx(row["test_loss"] - rows["uniform"]["test_loss"], rel=1e-6, abs=1e-12)
    assert rows["diversity lambda=50"]["valid_diversity"] >= rows["greedy"]["valid_diversity"]
    assert sel["valid_images"] == 10 and "validation split" in sel["valid_source"]
    with Image.open(out / result["files"]["selection_png"]) as png:
        assert png.format == "PNG"

    real = data.load_split  # the same run with the test split replaced by noise: the same members are chosen

    def noisy_test(config, split, progress=True):
        images = real(config, split, progress)
        return torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(5), dtype=torch.uint8) if split == "test" else images

    monkeypatch.setattr(data, "load_split", noisy_test)
    again = ensemble.main(["--ckpt", str(curve), "--endpoints", *map(str, endpoints), *RUN_FLAGS, "--out", str(tmp_path / "noisy")])
    for label, row in again["selection"]["ensembles"].items():
        assert row["members_chosen"] == rows[label]["members_chosen"], label
        assert row["valid_loss"] == rows[label]["valid_loss"]
        assert row["test_loss"] != pytest.approx(rows[label]["test_loss"], rel=1e-3)  # ... but scored on other images


def test_fge_members_are_saved_as_checkpoints_that_score_as_collected(run, tiny):
    out, result = run
    _, ev = tiny
    growth = result["methods"]["fge"]["growth"]
    assert result["files"]["fge_members"] == ["fge/member1.pt", "fge/member2.pt"]
    for n, name in enumerate(result["files"]["fge_members"]):
        model, ckpt = load_ae(out / name)
        assert ckpt["config"]["fge_member"] == {"from": result["fge_from"], "index": n, "iteration": [2, 6][n]}
        # member n's own test loss: the growth records the running mean of the members' losses
        own = (n + 1) * growth[n]["member_test_loss"] - n * (growth[n - 1]["member_test_loss"] if n else 0)
        assert ensemble.member(model, ev)["test_loss"] == pytest.approx(own, rel=1e-5)
