"""One BatchNorm recomputation (lib/training.recompute_bn) for every evaluation: eval_curve (a network on a path
at t), plane (a point of the plane), ensemble (a member) and function_space (a network's function) must leave
the same running statistics in the same network, and the rule they share (the inputs the group's objective
feeds the network: noisy for a denoising group) must be the one that decides them."""
import copy

import pytest
import torch

import ae
import curves
import data
import ensemble
import function_space
import plane
from lib import training
from lib.files import load_ae

CPU = torch.device("cpu")


def running_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]


def statistics_by_script(model: torch.nn.Module, other: torch.nn.Module, bn_images: torch.Tensor, noise: float) -> dict:
    """The BatchNorm statistics of `model` after each script's own way of measuring it (for eval_curve: the
    segment from `model` to `other`, evaluated at t = 0, whose network there is `model`)."""
    objective = training.Objective(ae.mse, noise)
    split_images = {"train": bn_images[:8], "test": bn_images[8:16]}
    out = {}
    segment = curves.segment(model, model.state_dict(), other.state_dict())
    training.evaluate_point(segment, split_images, objective, bn_images=bn_images, batch_size=16, device=CPU, t=0.0)
    out["eval_curve"] = running_stats(segment)
    m = copy.deepcopy(model)
    plane.measure(m, {"split_images": split_images, "loss_fn": objective, "bn_images": bn_images, "batch_size": 16,
                      "device": CPU, "features": None, "precision": "fp32"})
    out["plane"] = running_stats(m)
    m = ensemble.with_bn(copy.deepcopy(model), {"device": CPU, "bn_images": bn_images, "batch_size": 16, "noise": noise})
    out["ensemble"] = running_stats(m)
    m = copy.deepcopy(model)
    function_space.function_vector(m, bn_images[:4], 16, CPU, bn_images=bn_images, noise=noise)
    out["function_space"] = running_stats(m)
    return out


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_every_script_leaves_the_same_batchnorm_statistics(endpoints, noise):
    (model, ckpt), (other, _) = load_ae(endpoints[0]), load_ae(endpoints[1])
    bn_images = data.load_split(data.data_config(type("Args", (), {})(), base=ckpt["config"]["data"]), "train")[:40]
    stats = statistics_by_script(model, other, bn_images, noise)
    reference = stats["eval_curve"]
    assert len(reference) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) * 2
    for script, values in stats.items():
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(values, reference)), script
    # the exact mean over the images the network sees: the first BatchNorm's mean is that of the first
    # convolution's output on the (noisy) inputs
    objective = training.Objective(ae.mse, noise)
    inputs = torch.cat([objective.inputs(x, training.eval_noise_generator(i * 16)) for i, x in enumerate(data.batches(bn_images, 16))])
    with torch.no_grad():
        first = model.encoder[0](inputs)
    assert torch.allclose(reference[0], first.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_the_noise_of_a_denoising_group_changes_the_statistics(endpoints):
    (model, ckpt), (other, _) = load_ae(endpoints[0]), load_ae(endpoints[1])
    bn_images = data.load_split(data.data_config(type("Args", (), {})(), base=ckpt["config"]["data"]), "train")[:40]
    clean, noisy = (statistics_by_script(model, other, bn_images, noise) for noise in (0.0, 0.2))
    for script in clean:  # a script that ignored the rule (clean images for a denoising group) would give these
        assert not torch.allclose(clean[script][0], noisy[script][0], atol=1e-4), script
