"""Simplexes of bends (curves.py's layers, lib/complexes.py's points): barycentric points, uniform draws, fixed vertices, Cayley-Menger volumes."""
import math

import pytest
import torch

import ae
import curves
from lib import complexes


def tiny_models(count, seed=0):
    torch.manual_seed(seed)
    return [ae.AutoEncoder(latent_dim=4, width=2) for _ in range(count)]


def complex_net(models, connectors):
    """A CurveNet whose first len(models) bends are the models (fixed) and whose last `connectors` are free."""
    k = len(models) + connectors
    net = curves.CurveNet(ae.AutoEncoder(latent_dim=4, width=2), "polychain", k, fix_ends=tuple(range(len(models))))
    for i, m in enumerate(models):
        net.import_endpoint(m.state_dict(), i, buffers=i == 0)
    with torch.no_grad():  # connectors somewhere off the endpoints' plane
        for j in range(len(models), k):
            for _, layer in net.layers:
                for name in layer.param_names:
                    bends = layer.bends(name)
                    bends[j].copy_(sum(bends[:len(models)]) / len(models) + 0.1 * torch.randn_like(bends[j]))
    return net


def test_simplex_points_are_barycentric_and_zero_off_the_simplex():
    c = complexes.simplex_point([4, 1, 2], [0.5, 0.3, 0.2], 5)
    assert c == [0.0, 0.3, 0.2, 0.0, 0.5]
    for bad in (([0, 0], [0.5, 0.5]), ([0, 1], [0.7, 0.7]), ([0, 1], [1.5, -0.5]), ([0, 1], [1.0])):
        with pytest.raises(ValueError):
            complexes.simplex_point(*bad, 3)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_uniform_draws_have_the_dirichlet_mean_and_variance(k):
    g = torch.Generator().manual_seed(k)
    draws = torch.tensor([complexes.uniform_simplex(k, g) for _ in range(20000)], dtype=torch.float64)
    assert torch.all(draws >= 0) and torch.allclose(draws.sum(1), torch.ones(len(draws), dtype=torch.float64))
    n = len(draws)
    mean, var = draws.mean(0), draws.var(0)
    mean_se = draws.std(0) / math.sqrt(n)
    centred = draws - mean
    var_se = ((centred ** 4).mean(0) - var ** 2).sqrt() / math.sqrt(n)
    expected_var = (k - 1) / (k ** 2 * (k + 1))  # Dirichlet(1, ..., 1): a_i / a_0 = 1/k, var = (k-1) / (k^2 (k+1))
    assert torch.all((mean - 1 / k).abs() < 4 * mean_se)
    assert torch.all((var - expected_var).abs() < 4 * var_se)
    # not merely the right moments: a draw concentrated at the centroid would have variance 0
    assert var.min() > 0.5 * expected_var


def test_cayley_menger_gives_known_volumes():
    def gram(points):
        x = torch.tensor(points, dtype=torch.float64)
        return x @ x.T

    assert complexes.simplex_volume_sq(gram([[0, 0], [1, 0], [0, 1]])).item() == pytest.approx(0.25)  # unit right triangle: 1/2
    a = 2.0  # regular tetrahedron of edge a: V = a^3 / (6 sqrt 2)
    tetra = [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]  # edge 2 sqrt 2
    edge = 2 * math.sqrt(2)
    scaled = [[c * a / edge for c in p] for p in tetra]
    assert complexes.simplex_volume_sq(gram(scaled)).item() == pytest.approx((a ** 3 / (6 * math.sqrt(2))) ** 2)
    # moved away from the origin (the Gram matrix changes, the volume does not), in more dimensions
    shifted = [[c + 5.0 for c in p] + [3.0] for p in scaled]
    assert complexes.simplex_volume_sq(gram(shifted)).item() == pytest.approx((a ** 3 / (6 * math.sqrt(2))) ** 2)
    assert complexes.simplex_volume_sq(gram([[0, 0], [3, 4]])).item() == pytest.approx(25.0)  # a segment: its squared length
    assert abs(complexes.simplex_volume_sq(gram([[0, 0], [1, 1], [2, 2]])).item()) < 1e-12  # collinear: no area


def test_the_volume_of_bends_is_that_of_their_weight_vectors_and_differentiable():
    net = complex_net(tiny_models(3), 2)
    vectors = [net.bend_vector(j).detach().double() for j in (0, 3, 4)]
    d1, d2 = vectors[1] - vectors[0], vectors[2] - vectors[0]
    area_sq = (d1 @ d1) * (d2 @ d2) - (d1 @ d2) ** 2  # 4 x the triangle's squared area
    v_sq = complexes.simplex_volume_sq(net.gram([0, 3, 4]))
    assert v_sq.item() == pytest.approx(area_sq.item() / 4, rel=1e-6)
    v_sq.backward()
    free = [p for p in net.free_parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in free)
    assert all(not p.requires_grad for name, p in net.named_parameters() if name.endswith(("_0", "_1", "_2")))


def test_fixed_vertices_are_reproduced_at_their_corners_and_get_no_gradient():
    models = tiny_models(3)
    net = complex_net(models, 2)
    for i, m in enumerate(models):
        state = net.state_dict_at(complexes.simplex_point([i], [1.0], 5))
        for name, value in m.state_dict().items():
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(state[name], value), name
    x = torch.rand(4, 3, 64, 64)
    net.train()
    net(x, t=complexes.simplex_point([1, 3, 4], [0.2, 0.5, 0.3], 5)).square().mean().backward()
    for name, p in net.named_parameters():
        bend = int(name.rsplit("_", 1)[1])
        if bend < 3:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, name
    assert all(p.grad.abs().sum() > 0 for p in net.free_parameters() if p.dim() > 1)


def test_fixed_bends_must_exist():
    with pytest.raises(ValueError, match="fixed bends"):
        curves.CurveNet(ae.AutoEncoder(latent_dim=4, width=2), "polychain", 3, fix_ends=(0, 3))
    with pytest.raises(ValueError, match="coefficients"):
        curves.CurveNet(ae.AutoEncoder(latent_dim=4, width=2), "polychain", 3).set_t([0.5, 0.5])


def test_a_one_connector_complex_on_the_edges_of_a_and_b_is_the_polychain_through_its_connector():
    models = tiny_models(3, seed=1)
    net = complex_net(models, 1)  # vertices A, B, C, c
    chain = curves.CurveNet(ae.AutoEncoder(latent_dim=4, width=2), "polychain", 3)
    chain.import_endpoint(net.state_dict_at(complexes.simplex_point([0], [1.0], 4)), 0, buffers=True)
    chain.import_endpoint(net.state_dict_at(complexes.simplex_point([3], [1.0], 4)), 1)
    chain.import_endpoint(net.state_dict_at(complexes.simplex_point([1], [1.0], 4)), 2)
    net.eval(), chain.eval()
    x = torch.rand(3, 3, 64, 64)
    for k in range(33):  # t = k/32 is exact in binary, so are the weights of both parameterisations
        t = k / 32
        s = 2 * t if t < 0.5 else 2 * t - 1
        point = complexes.simplex_point([0, 3], [1 - s, s], 4) if t < 0.5 else complexes.simplex_point([3, 1], [1 - s, s], 4)
        a, b = net.state_dict_at(point), chain.state_dict_at(t)
        assert all(torch.equal(a[n], b[n]) for n in b), t
        with torch.no_grad():
            assert torch.equal(net(x, t=point), chain(x, t=t)), t


# ---------------------------------------------------------------- simplex.py on tiny endpoints

import data  # noqa: E402
import simplex  # noqa: E402
from conftest import killed_after_epoch, tiny_args  # noqa: E402
from lib import training  # noqa: E402
from lib.files import UserError, load_ae  # noqa: E402
import train_ae  # noqa: E402

TINY = ["--batch-size", "16", "--lr", "3e-3", "--bn-images", "32", "--train-images", "16", "--test-images", "16",
        "--points", "2", "--num-points", "3", "--eval-batch-size", "64"]


@pytest.fixture(scope="module")
def three(endpoints, tmp_path_factory):
    """The two session endpoints and a third (seed 2) trained on the same data."""
    tmp = tmp_path_factory.mktemp("third")
    out = tmp / "mse_s2.pt"
    train_ae.main(["--loss", "mse", "--seed", "2", "--out", str(out), *tiny_args(tmp, **{"--epochs": 3})])
    return [*endpoints, out]


@pytest.fixture(scope="module")
def fitted_complex(three, tmp_path_factory):
    out = tmp_path_factory.mktemp("complex") / "complex.pt"
    result = simplex.main(["--ckpts", *map(str, three), "--epochs", "2", "--grid", "2", "--out", str(out), *TINY])
    return out, result


def test_the_complex_keeps_its_endpoints_and_writes_everything_help_names(fitted_complex, three):
    out, result = fitted_complex
    for suffix in (".json", ".triangles.png", ".paths.png", ".recon.png"):
        assert out.with_name(out.stem + suffix).is_file(), suffix
    assert not training.resume_path(out).exists()
    net, ckpt = complexes.load(out)
    assert ckpt["config"]["simplexes"] == [[0, 3, 4], [1, 3, 4], [2, 3, 4]]
    for i, path in enumerate(three):
        model = load_ae(path)[0]
        assert torch.equal(net.weights(complexes.simplex_point([i], [1.0], 5)), curves.flat_parameters(model))
    c1, c2 = (net.weights(complexes.simplex_point([j], [1.0], 5)) for j in (3, 4))
    centroid = sum(curves.flat_parameters(load_ae(p)[0]) for p in three) / 3
    assert not torch.allclose(c1, centroid) and not torch.equal(c1, c2)  # trained, and apart
    history = ckpt["history"]
    assert history[-1]["test_loss_t05"] < history[0]["test_loss_t05"]  # the barycentres' loss fell
    assert len(result["points"]["complex"]) == 3 * 2 and len(result["points"]["plain"]) == 2
    assert len(result["paths"]) == 3 * 2 and set(result["barycentres"]) == {"e0+c1+c2", "e1+c1+c2", "e2+c1+c2", "e0+e1+e2"}
    assert len(result["grid"]["triangles"]["e0+e1+e2"]["test_loss"]) == 6  # (2+1)(2+2)/2 grid points
    for entry in result["points"]["complex"]:
        assert min(entry["weights"]) >= 0 and sum(entry["weights"]) == pytest.approx(1) and len(entry["weights"]) == 3


def test_vertex_losses_are_the_endpoints_own_on_every_test_image(fitted_complex, three):
    out, result = fitted_complex
    _, ckpt = complexes.load(out)
    images = data.load_split(ckpt["config"]["data"], "test")
    model = load_ae(three[1])[0]
    training.recompute_bn(model, data.load_split(ckpt["config"]["data"], "train")[:32], 0.0, batch_size=64, device=torch.device("cpu"))
    direct = training.per_image_losses(model, images, ae.mse, batch_size=64, device=torch.device("cpu"))["loss"].double().mean()
    assert result["vertices"][1]["test_loss"] == pytest.approx(direct.item(), rel=1e-6)
    s = result["summary"]
    worse = max(result["vertices"][:3], key=lambda v: v["test_loss"])
    assert s["worse_test_loss"] == worse["test_loss"]
    top = max(e["test_loss"] for e in result["points"]["complex"])
    assert s["complex"]["test_loss"]["max"] == top and s["complex"]["test_loss"]["max_vs_worse"]["ratio"] == pytest.approx(top / worse["test_loss"])


def test_a_sequential_fit_resumes_byte_for_byte_across_its_connectors(three, tmp_path, monkeypatch):
    flags = ["--ckpts", *map(str, three), "--epochs", "2", "--order", "sequential", "--grid", "0", *TINY, "--points", "0"]
    simplex.main([*flags, "--out", str(tmp_path / "whole.pt")])
    with killed_after_epoch(monkeypatch, 0):  # at the end of connector 1's phase
        simplex.main([*flags, "--out", str(tmp_path / "split.pt")])
    assert not (tmp_path / "split.json").exists()
    simplex.main([*flags, "--out", str(tmp_path / "split.pt"), "--resume"])
    assert (tmp_path / "whole.pt").read_bytes() == (tmp_path / "split.pt").read_bytes()
    net, _ = complexes.load(tmp_path / "whole.pt")
    centroid4 = sum(net.weights(complexes.simplex_point([j], [1.0], 5)) for j in range(4)) / 4
    assert not torch.allclose(net.weights(complexes.simplex_point([4], [1.0], 5)), centroid4)  # c2 trained after its start


def test_the_volume_term_pushes_the_connectors_apart(three, tmp_path):
    flags = ["--ckpts", *map(str, three), "--epochs", "1", "--grid", "0", *TINY, "--points", "0", "--num-points", "2"]
    volumes = {}
    for lam in ("0", "0.01"):
        result = simplex.main([*flags, "--volume-reg", lam, "--out", str(tmp_path / f"v{lam}.pt")])
        volumes[lam] = result["summary"]["volumes"]["connectors"]
    assert volumes["0.01"] > 2 * volumes["0"]


def test_bad_complexes_are_refused_in_one_line(three, tmp_path):
    base = ["--epochs", "1", *TINY, "--out", str(tmp_path / "x.pt")]
    with pytest.raises(UserError, match="same file"):
        simplex.main(["--ckpts", str(three[0]), str(three[0]), str(three[1]), *base])
    with pytest.raises(UserError, match="needs --connectors >= 2"):
        simplex.main(["--ckpts", *map(str, three), "--connectors", "1", "--volume-reg", "0.1", *base])
    with pytest.raises(UserError, match="at least one epoch per connector"):
        simplex.main(["--ckpts", *map(str, three), "--order", "sequential", "--connectors", "2", *base])
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.json").exists()


def test_espro_members_are_points_of_the_complex_scored_at_the_complexs_budget(fitted_complex, three, tmp_path):
    import ensemble
    import fit_curve

    curve = tmp_path / "curve.pt"
    fit_curve.main(["--a", str(three[0]), "--b", str(three[1]), "--epochs", "1", "--batch-size", "16", "--bn-images", "32",
                    "--out", str(curve)])
    out, _ = fitted_complex
    result = ensemble.main(["--ckpt", str(curve), "--endpoints", *map(str, three), "--complex", str(out), "--k", "2",
                            "--points", "2", "--fge-cycles", "1", "--cycle-steps", "2", "--no-sse", "--bn-images", "32",
                            "--test-images", "12", "--eval-batch-size", "64", "--out", str(tmp_path / "ens")])
    growth = result["methods"]["complex"]["growth"]
    assert [g["members"] for g in growth] == [1, 2]
    assert result["budget"]["complex"]["epochs"] == 3 * 3 + 2  # three endpoints of 3 epochs, the complex's 2
    assert result["table"][-1]["method"] == "complex" and result["table"][-1]["members"] == 2
    net, ckpt = complexes.load(out)
    for g in growth:
        assert min(g["point"]) >= 0 and sum(g["point"]) == pytest.approx(1)
        assert all(c == 0 for j, c in enumerate(g["point"]) if j not in ckpt["config"]["simplexes"][g["simplex"]])
    # the first member, evaluated as the CurveNet at its point (not the exported copy), gives the same loss
    cfg = ckpt["config"]["data"]
    test = data.load_split(cfg, "test")[:12]
    training.recompute_bn(net, data.load_split(cfg, "train")[:32], 0.0, batch_size=64, device=torch.device("cpu"), t=growth[0]["point"])
    direct = training.per_image_losses(net, test, ae.mse, batch_size=64, device=torch.device("cpu"), t=growth[0]["point"])["loss"]
    assert growth[0]["test_loss"] == pytest.approx(direct.double().mean().item(), rel=1e-5)
