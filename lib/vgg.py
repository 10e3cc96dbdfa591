"""VGG16's weights, for the perceptual loss (--vgg-weights) and LPIPS: ImageNet's through torchvision's weights API
and torch's download cache, a state-dict file, or a seeded random initialisation. Imported only where VGG16 is used,
so a bare copy of the card's scripts runs the MSE group without it."""
from __future__ import annotations

from pathlib import Path

import torch

import ae
from lib.files import UserError, load_failure


def vgg16_features(weights: str = "imagenet", seed: int = 0) -> torch.nn.Sequential:
    """VGG16's convolutional trunk with ImageNet weights ('imagenet', through torchvision's weights API and torch's
    download cache), a state-dict file (a path), or a random initialisation from a fixed seed ('random', for
    offline runs only: the same for every endpoint, so all members of a loss group share one loss)."""
    from torchvision.models import VGG16_Weights

    if weights == "random":
        return ae.vgg16_trunk(seed)
    features = ae.vgg16_trunk()
    if weights == "imagenet":
        url = VGG16_Weights.IMAGENET1K_V1.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
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
