"""Tests of the curve math and the curve-parametrized autoencoder (curves.py, ae.py)."""
import pytest
import torch
import torch.nn as nn

import ae
import curves


def endpoints(seed_a=1, seed_b=2, **kw):
    kw = {"latent_dim": 8, "width": 4, **kw}
    torch.manual_seed(seed_a)
    a = ae.AutoEncoder(**kw)
    torch.manual_seed(seed_b)
    b = ae.AutoEncoder(**kw)
    # give the endpoints distinct, non-trivial BatchNorm statistics and affine parameters
    for model in (a, b):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
                nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.uniform_(m.bias, -0.5, 0.5)
    return a, b


def connect(a, b, curve="bezier", num_bends=3):
    net = curves.CurveNet(ae.AutoEncoder(latent_dim=a.latent_dim, width=a.width), curve, num_bends)
    net.import_endpoint(a.state_dict(), 0, buffers=True)
    net.import_endpoint(b.state_dict(), num_bends - 1)
    net.init_linear()
    return net


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def perturb_middle(net):
    """Move the middle bends off the segment, so curve tests do not pass by linearity alone."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in net.free_parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("curve", curves.CURVES)
def test_curve_ends_are_the_endpoints_exactly(curve):
    a, b = endpoints()
    net = connect(a, b, curve)
    perturb_middle(net)
    assert torch.equal(net.weights(0.0), flat(a))
    assert torch.equal(net.weights(1.0), flat(b))
    assert not torch.equal(net.weights(0.5), flat(a))


@pytest.mark.parametrize("curve", curves.CURVES)
def test_exported_model_at_zero_reproduces_endpoint_a(curve):
    a, b = endpoints()
    net = connect(a, b, curve)
    perturb_middle(net)
    x = torch.rand(5, 3, 64, 64)
    a.eval(), net.eval()
    exported = net.export(0.0).eval()  # carries A's running statistics, copied in connect()
    with torch.no_grad():
        expected = a(x)
        assert torch.equal(exported(x), expected)
        assert torch.allclose(net(x, t=0.0), expected, atol=1e-6)
        assert not torch.allclose(net(x, t=0.5), expected, atol=1e-3)


def test_bezier_three_bends_formula_on_every_tensor():
    a, b = endpoints()
    net = connect(a, b, "bezier")
    perturb_middle(net)
    t = 0.3
    state = net.state_dict_at(t)
    for path, layer in net.layers:
        for name in layer.param_names:
            w0, w1, w2 = layer.bends(name)
            expected = (1 - t) ** 2 * w0 + 2 * t * (1 - t) * w1 + t**2 * w2
            assert torch.allclose(state[f"{path}.{name}"], expected, atol=1e-6), f"{path}.{name}"


def test_polychain_quarter_is_midpoint_of_first_two_bends():
    a, b = endpoints()
    net = connect(a, b, "polychain")
    perturb_middle(net)
    state = net.state_dict_at(0.25)
    for path, layer in net.layers:
        for name in layer.param_names:
            w0, w1, _ = layer.bends(name)
            assert torch.allclose(state[f"{path}.{name}"], (w0 + w1) / 2, atol=1e-6)


@pytest.mark.parametrize("curve", curves.CURVES)
@pytest.mark.parametrize("num_bends", [2, 3, 5])
def test_coefficients_sum_to_one_and_are_nonnegative(curve, num_bends):
    fn = curves.make_curve(curve, num_bends)
    for t in torch.linspace(0, 1, 101).tolist():
        c = fn(t)
        assert len(c) == num_bends
        assert abs(sum(c) - 1) < 1e-12
        assert min(c) >= 0


@pytest.mark.parametrize("curve", curves.CURVES)
def test_t_outside_unit_interval_is_rejected(curve):
    fn = curves.make_curve(curve, 3)
    for t in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="t must be in"):
            fn(t)
    a, b = endpoints()
    with pytest.raises(ValueError, match="t must be in"):
        connect(a, b, curve)(torch.rand(2, 3, 64, 64), t=1.5)


def test_fewer_than_two_bends_is_rejected():
    with pytest.raises(ValueError, match="num_bends >= 2"):
        curves.make_curve("bezier", 1)
    with pytest.raises(ValueError, match="unknown curve"):
        curves.make_curve("spline", 3)


@pytest.mark.parametrize("curve", curves.CURVES)
def test_one_step_changes_only_middle_bends(curve):
    a, b = endpoints()
    net = connect(a, b, curve)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    opt = torch.optim.SGD(net.free_parameters(), lr=0.1)
    x = torch.rand(8, 3, 64, 64)
    net.train()
    loss = ae.mse(net(x, t=0.4), x)
    loss.backward()
    opt.step()
    for name, p in net.named_parameters():
        bend = int(name.rsplit("_", 1)[1])
        if bend in (0, 2):
            assert p.grad is None and torch.equal(p, before[name]), name
        else:
            assert p.grad is not None and not torch.equal(p, before[name]), name


def test_linear_init_puts_middle_bend_at_average():
    a, b = endpoints()
    net = connect(a, b, "bezier", num_bends=3)
    for _, layer in net.layers:
        for name in layer.param_names:
            w0, w1, w2 = layer.bends(name)
            assert torch.allclose(w1, (w0 + w2) / 2)
    # a linearly initialised Bezier curve is the segment itself
    segment = connect(a, b, "polychain", num_bends=2)
    for t in (0.1, 0.5, 0.8):
        assert torch.allclose(net.weights(t), segment.weights(t), atol=1e-6)
        assert torch.allclose(segment.weights(t), (1 - t) * flat(a) + t * flat(b), atol=1e-6)


def test_unsupported_layer_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU())
    with pytest.raises(TypeError, match="GroupNorm"):
        curves.CurveNet(model)
    with pytest.raises(TypeError, match="padding_mode"):
        curves.CurveNet(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")))


def test_update_bn_gives_the_mean_over_all_images():
    a, _ = endpoints()
    x = torch.rand(13, 3, 64, 64)
    used = curves.update_bn(a, [x[:8], x[8:]])  # unequal batches: each image must count once
    assert used == 13
    with torch.no_grad():
        h = a.encoder[0](x)
    assert torch.allclose(a.encoder[1].running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert a.training  # update_bn restores the mode it found


def test_update_bn_at_t_matches_the_exported_model():
    a, b = endpoints()
    net = connect(a, b, "bezier")
    perturb_middle(net)
    x = torch.rand(16, 3, 64, 64)
    assert curves.update_bn(net, [x], t=0.7, max_images=10) == 10
    exported = net.export(0.7)
    curves.update_bn(exported, [x[:10]])
    for (name, mine), (_, theirs) in zip(net.net.named_buffers(), exported.named_buffers()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-5), name


# ---------------------------------------------------------------- the arc-length objective

@pytest.mark.parametrize("curve,num_bends", [("bezier", 3), ("bezier", 4), ("polychain", 3), ("polychain", 4)])
def test_speed_is_the_norm_of_the_weights_derivative(curve, num_bends):
    net = connect(*endpoints(), curve, num_bends)
    perturb_middle(net)
    ts, h = [0.1, 0.3, 0.55, 0.9], 1e-3  # away from the polychain's bends, where phi' jumps
    speed = net.speed(ts)
    for t, v in zip(ts, speed.tolist()):
        finite = ((net.weights(t + h).double() - net.weights(t - h).double()).norm() / (2 * h)).item()
        assert v == pytest.approx(finite, rel=1e-3)
    assert net.speed([0.2, 0.7]).min() > 0


def test_arclength_sampler_is_the_identity_on_a_straight_segment():
    net = connect(*endpoints())  # middle bend at the midpoint: constant speed
    sampler = curves.ArcLengthSampler(net)
    sampler.refresh()
    assert [sampler(u) for u in (0.0, 0.13, 0.5, 0.87, 1.0)] == pytest.approx([0.0, 0.13, 0.5, 0.87, 1.0], abs=1e-9)


def test_arclength_sampler_draws_t_with_density_proportional_to_speed():
    net = connect(*endpoints())
    with torch.no_grad():  # push the middle bend far out: the curve turns there, fast near its ends, slow in the middle
        for p in net.free_parameters():
            p.mul_(6.0)
    sampler = curves.ArcLengthSampler(net)
    sampler.refresh()
    n = 4000
    t = torch.tensor([sampler((i + 0.5) / n) for i in range(n)])
    assert torch.all(t.diff() >= 0) and sampler(0.0) == 0.0 and sampler(1.0) == pytest.approx(1.0)
    fine = torch.linspace(0, 1, 4001, dtype=torch.float64)
    speed = net.speed(fine.tolist())
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), (0.5 * (speed[1:] + speed[:-1]) * fine.diff()).cumsum(0)])
    share = lambda a, b: float((cum[round(b * 4000)] - cum[round(a * 4000)]) / cum[-1])  # noqa: E731
    for a, b in ((0.0, 0.25), (0.25, 0.5), (0.4, 0.6), (0.75, 1.0)):
        assert float(((t >= a) & (t < b)).double().mean()) == pytest.approx(share(a, b), abs=2e-3)
    assert share(0.4, 0.6) < 0.2 - 0.1  # the test has teeth: far from uniform
