"""Tests of the permutation alignment (align.py) on tiny autoencoders."""
import numpy as np
import pytest
import torch

import ae
from lib import training
from lib import align
from lib.files import UserError, load_ae

CONFIG = {"arch": "conv-ae-v1", "latent_dim": 8, "width": 4}


def random_model(seed: int) -> ae.AutoEncoder:
    """A tiny autoencoder whose BatchNorm affine parameters and running statistics are random too
    (at their defaults they are the same for every channel, and a permutation could not show)."""
    torch.manual_seed(seed)
    model = ae.build_model(CONFIG)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1), m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    return model


def random_perms(seed: int) -> dict[str, torch.Tensor]:
    """A random permutation of every group of the tiny model."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {g: shape[axes.index(g)] for shape, axes in align.permutation_spec(CONFIG).values() for g in axes if g is not None}
    return {g: torch.randperm(n, generator=generator) for g, n in sizes.items()}


def outputs(state: dict, x: torch.Tensor, train: bool) -> torch.Tensor:
    model = ae.build_model(CONFIG)
    model.load_state_dict(state)
    with torch.no_grad():
        return model.train(train)(x)


@pytest.mark.parametrize("train", [False, True])
def test_the_aligned_b_computes_the_same_function(train):
    a, b = random_model(0).state_dict(), random_model(1).state_dict()
    aligned, info = align.align(a, b, CONFIG)
    x = torch.rand(6, 3, 64, 64)
    assert info["units_moved"] > 0  # the test would prove nothing were B left as it was
    assert torch.allclose(outputs(aligned, x, train), outputs(b, x, train), atol=1e-5, rtol=0)
    assert not torch.allclose(outputs(a, x, train), outputs(b, x, train), atol=1e-3, rtol=0)


def test_a_permuted_copy_is_aligned_back_exactly():
    a = random_model(0).state_dict()
    b = align.apply(a, align.permutation_spec(CONFIG), random_perms(1))
    assert not torch.equal(a["encoder.13.weight"], b["encoder.13.weight"]) and not torch.equal(a["decoder.2.running_mean"], b["decoder.2.running_mean"])
    aligned, info = align.align(a, b, CONFIG)
    assert all(torch.equal(aligned[k], a[k]) for k in a), [k for k in a if not torch.equal(aligned[k], a[k])]
    assert info["distance_before"] > 1 and info["distance_after"] == 0 and info["converged"]


def faces(n: int = 48) -> torch.Tensor:
    import data

    return data.synthetic_faces(0, n)


@pytest.mark.parametrize("train", [False, True])
def test_activation_matching_keeps_b_s_function_and_raises_the_matched_correlation(train):
    a, b = random_model(0).state_dict(), random_model(1).state_dict()
    aligned, info = align.align(a, b, CONFIG, method="activations", images=faces(), batch_size=16)
    x = torch.rand(6, 3, 64, 64)
    assert info["method"] == "activation matching" and info["units_moved"] > 0 and info["images"] == 48
    assert torch.allclose(outputs(aligned, x, train), outputs(b, x, train), atol=1e-5, rtol=0)
    for group, after in info["mean_correlation_after"].items():  # the assignment maximises the summed correlation
        assert after >= info["mean_correlation_before"][group] - 1e-12, group
    assert sum(info["mean_correlation_after"].values()) > sum(info["mean_correlation_before"].values()) + 0.1


def test_activation_matching_aligns_a_permuted_copy_back_exactly():
    a = random_model(0).state_dict()
    b = align.apply(a, align.permutation_spec(CONFIG), random_perms(1))
    aligned, info = align.align(a, b, CONFIG, method="activations", images=faces(), batch_size=16)
    params = [name for name, _ in ae.build_model(CONFIG).named_parameters()]
    assert all(torch.equal(aligned[k], a[k]) for k in params), [k for k in params if not torch.equal(aligned[k], a[k])]
    assert info["distance_after"] == 0 < info["distance_before"]
    assert all(abs(c - 1) < 1e-6 for c in info["mean_correlation_after"].values())  # every unit found its own copy


def test_activation_matching_needs_images():
    a, b = random_model(0).state_dict(), random_model(1).state_dict()
    with pytest.raises(UserError, match="activation matching needs training images"):
        align.align(a, b, CONFIG, method="activations")


def test_alignment_never_moves_b_away_from_a(endpoints):
    pairs = [(random_model(s).state_dict(), random_model(s + 10).state_dict()) for s in range(3)]
    pairs.append(tuple(load_ae(p)[0].state_dict() for p in endpoints))  # two trained endpoints
    for a, b in pairs:
        _, info = align.align(a, b, CONFIG)
        assert info["distance_after"] < info["distance_before"] and info["converged"] and info["iterations"] >= 2


def test_alignment_is_deterministic():
    a, b = random_model(0).state_dict(), random_model(1).state_dict()
    (first, info), (second, again) = align.align(a, b, CONFIG), align.align(a, b, CONFIG)
    assert info == again and all(torch.equal(first[k], second[k]) for k in first)


def test_an_unknown_architecture_is_refused_naming_it():
    state = random_model(0).state_dict()
    with pytest.raises(UserError, match="cannot align architecture 'resnet-ae'") as error:
        align.align(state, state, {**CONFIG, "arch": "resnet-ae"})
    assert "\n" not in str(error.value)


def test_the_aligned_segment_joins_a_to_the_aligned_b():
    import fit_curve

    a, b = random_model(0), random_model(1)
    net = fit_curve.build_curve(a, b, "bezier", 3)
    segment = align.aligned_segment(net)
    aligned, info = align.align(a.state_dict(), b.state_dict(), CONFIG)
    assert segment.num_bends == 2 and segment.alignment == info
    assert torch.equal(segment.weights(0.0), net.weights(0.0))
    params = [name for name, _ in a.named_parameters()]
    assert torch.equal(segment.weights(1.0), torch.cat([aligned[k].reshape(-1) for k in params]))


# ---------------------------------------------------------------- eval_curve.py --aligned

EVAL_FLAGS = ["--num_points", "5", "--columns", "3", "--bn-images", "40", "--train-images", "40", "--test-images", "12"]


@pytest.fixture(scope="module")
def curve(one_epoch_curve):
    return one_epoch_curve


@pytest.fixture(scope="module")
def evaluated(curve):
    """The curve evaluated without and with --aligned: (plain result, aligned result, the aligned JSON's path)."""
    import eval_curve

    plain = eval_curve.main(["--ckpt", str(curve), *EVAL_FLAGS, "--out", str(curve.with_name("plain.eval.json"))])
    result = eval_curve.main(["--ckpt", str(curve), *EVAL_FLAGS, "--aligned", "--out", str(curve.with_name("aligned.eval.json"))])
    return plain, result, curve.with_name("aligned.eval.json")


def test_eval_aligned_adds_the_aligned_segment_beside_the_others(evaluated):
    plain, result, path = evaluated
    tmp_path = path.parent
    assert list(plain["paths"]) == ["curve", "segment"] and "alignment" not in plain
    assert list(result["paths"]) == ["curve", "segment", "aligned_segment"]
    segment, aligned = result["paths"]["segment"], result["paths"]["aligned_segment"]
    assert aligned.keys() == segment.keys() and aligned["summary"].keys() == segment["summary"].keys()
    assert aligned["summary"]["test_loss"].keys() == segment["summary"]["test_loss"].keys()
    for name in training.METRICS:
        assert aligned[name][0] == segment[name][0]  # the same A at t=0
        assert aligned[name][-1] == pytest.approx(segment[name][-1], rel=1e-4)  # B, permuted: the same function
        assert aligned[name][2] != segment[name][2]  # but another path between them
    assert result["alignment"]["method"] == "activation matching" and result["alignment"]["images"] > 0  # --align's default
    assert result["paths"]["segment"] == plain["paths"]["segment"]  # the other paths as without --aligned
    info = result["alignment"]
    assert info["distance_after"] < info["distance_before"] and aligned["length"] == pytest.approx(info["distance_after"], rel=1e-4)
    assert segment["length"] == pytest.approx(info["distance_before"], rel=1e-4)
    with np.load(tmp_path / "aligned.eval.npz") as npz:
        assert npz["aligned_segment"].shape == npz["segment"].shape
        assert (npz["aligned_segment"][0] == npz["segment"][0]).all()
    assert result["files"]["aligned_segment_png"] == "aligned.eval.aligned_segment.png" and (tmp_path / "aligned.eval.aligned_segment.png").is_file()


# ---------------------------------------------------------------- fit_curve.py --aligned

@pytest.mark.parametrize("method", ["weights", "activations"])
def test_fit_aligned_joins_a_to_the_aligned_b_and_records_it(endpoints, curve, tmp_path, method):
    import data
    import fit_curve
    from lib.files import load_curve

    out = tmp_path / "aligned.pt"
    fit_curve.main(["--a", str(endpoints[0]), "--b", str(endpoints[1]), "--aligned", "--align", method, "--epochs", "1",
                    "--batch-size", "16", "--bn-images", "40", "--out", str(out)])
    net, ckpt = load_curve(out)
    (a, ckpt_a), (b, _) = load_ae(endpoints[0]), load_ae(endpoints[1])
    images = data.load_split(data.data_config(type("Args", (), {})(), base=ckpt_a["config"]["data"]), "train")[:40]  # --bn-images
    aligned, info = align.align(a.state_dict(), b.state_dict(), CONFIG, method=method, images=images, batch_size=256)
    assert ckpt["config"]["aligned"] is True and ckpt["config"]["alignment"] == info
    assert info["method"] == {"weights": "weight matching", "activations": "activation matching"}[method]
    assert "aligned" not in load_curve(curve)[1]["config"] and "alignment" not in load_curve(curve)[1]["config"]  # off by default
    params = [name for name, _ in a.named_parameters()]
    assert torch.equal(net.weights(1.0), torch.cat([aligned[k].reshape(-1) for k in params]))
    assert torch.equal(net.weights(0.0), torch.cat([a.state_dict()[k].reshape(-1) for k in params]))
    assert fit_curve.default_out("x/a.pt", "b.pt", "bezier", aligned=True).name == "a-b-bezier-aligned.pt"
    assert fit_curve.default_out("x/a.pt", "b.pt", "bezier", aligned=True, align="weights").name == "a-b-bezier-aligned-weights.pt"


def test_plot_draws_the_aligned_segment_dotted(evaluated, tmp_path):
    import plot

    plain, result, path = evaluated
    for evaluated_pair, dotted in ((plain, 0), (result, 1)):
        fig = plot.draw_losses([evaluated_pair], "t")
        for ax in fig.axes:
            lines = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
            assert len(lines) == dotted and all(line.get_label().endswith("aligned segment") for line in lines)
    written = plot.main([str(path), "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == ["fig2_mse_bezier.png", "fit_aligned.png", "pair_aligned.png", "recon_aligned.gif", "strip_aligned.png"]
    with np.load(path.with_name("aligned.eval.npz")) as npz:
        fig = plot.draw_strip(result, {k: npz[k] for k in npz.files})
    assert [ax.get_title() for ax in fig.axes] == ["original", "along the bezier curve", "along the segment", "along the aligned segment"]
