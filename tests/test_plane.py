"""Tests of plane.py (the loss in the plane of a curve's three bends, the paper's Figure 1) and its figure."""
import copy
import json

import pytest
import torch

import curves
import eval_curve
import fit_curve
import plane
import plot
import train_ae
from lib import training
from conftest import tiny_args
from lib.files import CURVE_FORMAT, file_sha256, load_ae, load_checkpoint, save_checkpoint

SUBSETS = ["--bn-images", "40", "--train-images", "40", "--test-images", "12"]


@pytest.fixture(scope="module")
def curve(endpoints, tmp_path_factory):
    """A Bezier curve fitted for 2 epochs between the two endpoints."""
    out = tmp_path_factory.mktemp("plane") / "curve.pt"
    fit_curve.main(["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--epochs", "2", "--lr", "3e-3", "--batch-size", "16",
                    "--bn-images", "40", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def result(curve):
    """The curve's plane on a 3x3 grid without margins, so the grid's corners (0, 0) and (1, 0) are w0 and w1."""
    return plane.main(["--ckpt", str(curve), "--grid", "3", "--margin", "0", *SUBSETS])


def test_basis_is_orthonormal_and_the_bends_land_on_their_coordinates(curve):
    src = plane.from_curve(curve)
    w0, theta, w1 = src["weights"]
    basis = plane.plane_basis(w0, w1, theta)
    u, v = basis["u"], basis["v"]
    assert float(u @ u) == pytest.approx(1, abs=1e-12) and float(v @ v) == pytest.approx(1, abs=1e-12)
    assert abs(float(u @ v)) < 1e-12
    assert basis["dx"] == pytest.approx(float((w1.double() - w0.double()).norm()))
    x0, y0, r0 = plane.coordinates(w0, basis)
    x1, y1, r1 = plane.coordinates(w1, basis)
    xt, yt, rt = plane.coordinates(theta, basis)
    assert (x0, y0, r0) == (0, 0, 0)
    assert (x1, y1) == pytest.approx((1, 0), abs=1e-9) and yt > 0 and max(r1, rt) < 1e-9
    assert torch.equal(plane.weights_at(0, 0, basis), w0)  # the network rebuilt at a bend's coordinates is that bend
    for w, (x, y) in ((w1, (x1, y1)), (theta, (xt, yt))):
        assert torch.allclose(plane.weights_at(x, y, basis), w, rtol=0, atol=1e-6)
    net = src["net"]  # the bends read back: phi(0) = w0, phi(1) = w1, and for Bezier phi(1/2) = w0/4 + theta/2 + w1/4
    assert torch.equal(w0, net.weights(0.0)) and torch.equal(w1, net.weights(1.0))
    assert torch.allclose(theta, 2 * net.weights(0.5) - (w0 + w1) / 2, atol=1e-6)
    model = plane.set_weights(copy.deepcopy(src["template"]), plane.weights_at(xt, yt, basis))
    assert torch.allclose(curves.flat_parameters(model), theta, rtol=0, atol=1e-6)


def test_grid_corner_at_w0_gives_eval_curves_t0_loss(result, curve, tmp_path):
    # plane.py measures every grid point on the subsets themselves: eval_curve's plain-subset estimator
    evaluation = eval_curve.main(["--ckpt", str(curve), "--num_points", "2", "--columns", "2", *SUBSETS, "--estimator", "subset",
                                  "--out", str(tmp_path / "e.eval.json")])
    assert result["x"] == pytest.approx([0, 0.5, 1], abs=1e-9) and result["y"][0] == 0
    for name in ("train_loss", "test_loss", "train_mse_se"):
        at_t0 = evaluation["paths"]["curve"][name][0]
        assert result["grid"][name][0][0] == pytest.approx(at_t0, rel=1e-5)  # the grid point (0, 0)
        assert result["points"][0][name] == pytest.approx(at_t0, rel=1e-5)  # w0 itself
        assert result["grid"][name][0][2] == pytest.approx(evaluation["paths"]["curve"][name][1], rel=1e-4)  # (1, 0): w1
    assert [p["name"] for p in result["points"]] == ["w0", "theta", "w1"] and result["segments"] == [[0, 2]]
    assert result["settings"]["test_images"] == 12 and result["curve_ckpt"] == str(curve)


def test_the_curve_lies_in_the_plane(result):
    projection = result["curve_projection"]
    assert projection["max_residual"] < 1e-6
    theta = result["points"][1]
    assert (projection["x"][0], projection["y"][0]) == pytest.approx((0, 0), abs=1e-9)
    assert (projection["x"][-1], projection["y"][-1]) == pytest.approx((1, 0), abs=1e-6)
    middle = projection["t"].index(0.5)  # Bezier: phi(1/2) = w0/4 + theta/2 + w1/4
    assert projection["x"][middle] == pytest.approx(0.25 + theta["x"] / 2, abs=1e-6)
    assert projection["y"][middle] == pytest.approx(theta["y"] / 2, abs=1e-6)


def test_an_interrupted_grid_resumes_where_it_stopped_with_the_same_values(curve, tmp_path, monkeypatch, capsys):
    argv = ["--ckpt", str(curve), "--grid", "4", *SUBSETS]
    whole = plane.main([*argv, "--out", str(tmp_path / "whole.plane.json")])
    real, calls = plane.measure, []

    def killed_after(n):
        def measure(model, ev):
            if len(calls) == n:
                raise KeyboardInterrupt
            calls.append(1)
            return real(model, ev)
        return measure

    out = tmp_path / "cut.plane.json"
    monkeypatch.setattr(plane, "measure", killed_after(3 + 2 * 4 + 1))  # the 3 points, 2 rows of 4, 1 more
    with pytest.raises(KeyboardInterrupt):
        plane.main([*argv, "--out", str(out)])
    partial = tmp_path / "cut.plane.partial.json"
    assert not out.exists() and sorted(json.loads(partial.read_text())["rows"]) == ["0", "1"]
    assert "2 of 4 rows are kept" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(plane, "measure", killed_after(10**6))
    resumed = plane.main([*argv, "--out", str(out)])
    assert len(calls) == 2 * 4 and not partial.exists()  # only the unfinished rows
    for key in ("x", "y", "grid", "points", "curve_projection", "settings"):
        assert resumed[key] == whole[key], key
    assert json.loads(out.read_text())["grid"] == whole["grid"]


def test_a_partial_file_of_other_settings_is_not_used(curve, tmp_path, capsys):
    out = tmp_path / "p.plane.json"
    save = plane.partial_path(out)
    key = {"grid": 2}
    save.write_text(json.dumps({"format": plane.PARTIAL_FORMAT, "key": key, "points": None, "rows": {"0": {}, "1": {}}}))
    result = plane.main(["--ckpt", str(curve), "--grid", "2", *SUBSETS, "--out", str(out)])
    assert "was made with other settings" in capsys.readouterr().out
    assert len(result["grid"]["test_loss"]) == 2 and all(len(row) == 2 for row in result["grid"]["test_loss"])
    assert not save.exists()


@pytest.fixture(scope="module")
def third(endpoints, tmp_path_factory):
    """A third MSE endpoint (seed 2) of the same group, trained as the first two (and on their data cache)."""
    out = tmp_path_factory.mktemp("third") / "mse_s2.pt"
    train_ae.main(["--loss", "mse", "--seed", "2", "--out", str(out), *tiny_args(endpoints[0].parent, **{"--epochs": 3})])
    return out


# other sizes for each subset, so that BatchNorm, train and test images taken from the wrong subset show
POINT_SUBSETS = ["--bn-images", "24", "--train-images", "40", "--test-images", "12"]


def chain_through(paths, out, curve):
    """A polychain curve checkpoint whose 3 bends are the endpoints `paths` (at t = 0, 1/2 and 1: exactly those
    weights), with the fitted `curve`'s config otherwise, for eval_curve.py to measure each endpoint."""
    models = [load_ae(p) for p in paths]
    net = curves.CurveNet(models[0][0], "polychain", 3)
    for j, (model, _) in enumerate(models):
        net.import_endpoint(model.state_dict(), j)
    for t, (model, _) in zip((0.0, 0.5, 1.0), models):
        assert torch.equal(net.weights(t), curves.flat_parameters(model))
    config = load_checkpoint(curve, CURVE_FORMAT)["config"]
    ends = [{"path": str(p), "sha256": file_sha256(p), "config": ckpt["config"]} for p, (_, ckpt) in zip(paths, models)]
    save_checkpoint(out, CURVE_FORMAT, {"state_dict": net.state_dict(),
                                        "config": {**config, "curve": "polychain", "num_bends": 3, "endpoints": ends}})
    return out


def test_points_gives_the_plane_of_three_endpoints_and_plot_draws_it(endpoints, third, result, curve, tmp_path):
    out = tmp_path / "three.plane.json"
    paths = [endpoints[0], endpoints[1], third]
    three = plane.main(["--points", *map(str, paths), "--grid", "3", *POINT_SUBSETS, "--out", str(out)])
    # each point's losses are its endpoint's own, measured by eval_curve.py on the same subsets with the plane's
    # estimator (the plain subset means) at the bend of a chain through the three endpoints
    chain = chain_through(paths, tmp_path / "chain.pt", curve)
    own = eval_curve.main(["--ckpt", str(chain), "--num_points", "3", "--columns", "2", *POINT_SUBSETS, "--estimator", "subset",
                           "--out", str(tmp_path / "chain.eval.json")])["paths"]["curve"]
    assert own["estimator"] == ["subset"] * 3 and three["settings"]["bn_images"] == 24
    names = [*training.METRICS, *(f"{m}_se" for m in training.METRICS)]
    for i, point in enumerate(three["points"]):
        for name in names:
            assert point[name] == pytest.approx(own[name][i], rel=1e-5), (point["name"], name)
    assert len({round(own["test_loss"][i], 6) for i in range(3)}) == 3  # three different networks: a mix-up would show
    a, b, c = three["points"]
    assert (a["x"], a["y"], b["y"]) == (0, 0, pytest.approx(0, abs=1e-9)) and b["x"] == pytest.approx(1) and c["y"] > 0
    assert three["source"] == "points" and three["segments"] == [[0, 1], [1, 2], [0, 2]] and three["curve_projection"] is None
    assert three["endpoint_seeds"] == [0, 1, 2] and len(three["checkpoints"]) == 3
    assert all(v > 0 for row in three["grid"]["test_loss"] for v in row)
    written = plot.main([str(out), str(curve.with_name("curve.plane.json")), "--out", str(tmp_path / "fig")])
    assert sorted(p.name for p in written) == ["plane_curve.png", "plane_three.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def one_line_error(capsys, argv):
    """Run plane.py's main as the command line does: the UserError's line on stderr."""
    with pytest.raises(SystemExit) as exit_:
        plane.cli.run(plane.main, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line(curve, endpoints, tmp_path, capsys):
    ckpt = load_checkpoint(curve, CURVE_FORMAT)
    config = ckpt["config"]
    segment = curves.CurveNet(plane.from_curve(curve)["template"], "polychain", 2)
    two = tmp_path / "two.pt"
    save_checkpoint(two, CURVE_FORMAT, {**ckpt, "state_dict": segment.state_dict(), "config": {**config, "curve": "polychain", "num_bends": 2}})
    assert "has 2 bends, but a plane needs exactly 3" in one_line_error(capsys, ["--ckpt", str(two)])
    assert "does not exist" in one_line_error(capsys, ["--ckpt", str(tmp_path / "missing.pt")])
    assert "does not exist" in one_line_error(capsys, ["--points", str(endpoints[0]), str(endpoints[1]), str(tmp_path / "no.pt")])
    assert "repeats" in one_line_error(capsys, ["--points", str(endpoints[0]), str(endpoints[1]), str(endpoints[0])])
    assert "not both" in one_line_error(capsys, ["--ckpt", str(curve), "--points", *map(str, [*endpoints, endpoints[0]])])
    assert "one value or four" in one_line_error(capsys, ["--ckpt", str(curve), "--margin", "0.1", "0.2"])
