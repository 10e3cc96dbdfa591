"""VGG16 beyond its layers (ae.py): its weights, for the perceptual loss (--vgg-weights) and LPIPS (ImageNet's through
torchvision's weights API and torch's download cache, a state-dict file, or a seeded random initialisation), the LPIPS
network. Imported only where VGG16 is used,
so a bare copy of the card's scripts runs the MSE group without it."""
from __future__ import annotations

import copy
import functools
import inspect
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

import ae
from lib.files import UserError, load_failure


def imagenet_cache() -> Path:
    """Where torch's download cache keeps torchvision's ImageNet VGG16 weights."""
    from torchvision.models import VGG16_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name


def vgg16_features(weights: str = "imagenet", seed: int = 0) -> torch.nn.Sequential:
    """VGG16's convolutional trunk with ImageNet weights ('imagenet', through torchvision's weights API and torch's
    download cache), a state-dict file (a path), or a random initialisation from a fixed seed ('random', for
    offline runs only: the same for every endpoint, so all members of a loss group share one loss)."""
    from torchvision.models import VGG16_Weights

    if weights == "random":
        return ae.vgg16_trunk(seed)
    features = ae.vgg16_trunk()
    if weights == "imagenet":
        url, cached = VGG16_Weights.IMAGENET1K_V1.url, imagenet_cache()
        try:
            state = torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
        except Exception as e:
            raise UserError(f"could not get ImageNet VGG16 weights ({type(e).__name__}); offline, download {url} "
                            f"elsewhere and put it at {cached}, or pass --vgg-weights PATH") from None
        source = cached
    else:
        source = Path(weights)
        if not source.is_file():
            raise UserError(f"VGG16 weight file {source} does not exist; use --vgg-weights imagenet, random, or an existing .pth file")
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot read VGG16 weights from {source}: {load_failure(e)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and any(str(k).startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if str(k).startswith("features.")}
    try:
        features.load_state_dict(state)
    except Exception as e:
        raise UserError(f"{source} is not a VGG16 state dict ({str(e).splitlines()[0][:120]}); "
                        f"save torchvision's vgg16().state_dict()") from None
    return features


def vgg_weights_name(weights: str) -> str:
    """What a config records of --vgg-weights: imagenet, random, or file:<the file's name>."""
    return weights if weights in ("imagenet", "random") else f"file:{Path(weights).name}"


@functools.lru_cache(maxsize=1)
def lpips_network() -> nn.Module:
    """torchmetrics' LPIPS-VGG network with its calibrated linear layers (shipped in its package) and a random trunk (no
    download; lpips_metric loads the trunk's weights): built once per process, as torchvision builds a whole VGG16."""
    try:
        from torchmetrics.functional.image.lpips import _NoTrainLpips
    except ImportError as e:
        raise UserError(f"this torchmetrics has no LPIPS network ({e}); pip install -r requirements.txt") from None
    net = _NoTrainLpips(net="vgg", pretrained=True, pnet_rand=True)
    linear = Path(inspect.getfile(_NoTrainLpips)).parent / "lpips_models" / "vgg.pth"
    shipped = torch.load(linear, map_location="cpu", weights_only=True)
    if not shipped or any(not torch.equal(net.state_dict()[k], v) for k, v in shipped.items()):
        raise UserError(f"torchmetrics' LPIPS calibration {linear} did not load; reinstall torchmetrics")
    return net


def lpips_metric(weights: str, loss_weights: str | None, device: torch.device) -> tuple[Callable | None, dict]:
    """LPIPS-VGG (Zhang et al. 2018) as --lpips asks, and what an evaluation records of it. `weights`: auto (the
    perceptual loss's own VGG16 weights `loss_weights` unless random, else ImageNet's if torch's cache has them: auto
    never downloads), imagenet (the cache or a download), a file, random (an uncalibrated backbone, recorded as
    lpips_uncalibrated, never as LPIPS) or none. Returns a callable (reconstructions, images in [0, 1]) -> per-image
    LPIPS, or None with the reason."""
    if weights == "none":
        return None, {"metric": None, "reason": "--lpips none"}
    source = weights
    if weights == "auto":
        source = loss_weights if loss_weights not in (None, "random") else "imagenet"
        if source == "imagenet" and not imagenet_cache().is_file():
            return None, {"metric": None, "reason": f"no ImageNet VGG16 weights for LPIPS in torch's cache ({imagenet_cache()}); "
                                                    f"--lpips imagenet downloads them, --lpips PATH reads them from a file"}
    features = vgg16_features(source)
    net = copy.deepcopy(lpips_network())
    bounds = (4, 9, 16, 23)  # where torchmetrics cuts VGG16's trunk into its five slices
    net.net.load_state_dict({f"slice{1 + sum(int(k.split('.')[0]) >= b for b in bounds)}.{k}": v
                             for k, v in features.state_dict().items()})
    net = net.to(device).eval()
    name = vgg_weights_name(source)
    return (lambda recon, x: net(recon, x, normalize=True).reshape(len(x)).float()), {
        "metric": "lpips" if source != "random" else "lpips_uncalibrated", "backbone": name, "calibrated": source != "random",
        "linear_layers": f"torchmetrics {version('torchmetrics')}, lpips_models/vgg.pth", "reason": None}
