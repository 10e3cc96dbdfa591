"""The convolutional autoencoder and its losses (model code only: no file or data I/O).

Images are 3x64x64 in [0, 1]. The encoder halves the resolution four times with strided
convolutions (64 -> 4) and maps the 4x4 feature map to the code with one linear layer; the
decoder mirrors it. BatchNorm follows every hidden convolution, as in the paper's VGG/ResNet
curves, so BatchNorm statistics along a curve have to be recomputed (see curves.update_bn).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from lib.files import UserError, load_failure

IMAGE_SIZE = 64
LOSSES = ("mse", "perceptual")  # a loss group is one of them, optionally denoising and/or sparse (group_name)


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    # Transposed convolutions (kernel 4, stride 2): the kernel is a multiple of the stride, so
    # every output pixel gets the same number of taps (no checkerboard), and it is about half
    # the cost of nearest-upsample + 3x3 conv at the same width.
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class AutoEncoder(nn.Module):
    """Conv autoencoder: 3x64x64 -> `latent_dim` -> 3x64x64; `width` is the first layer's channels."""

    def __init__(self, latent_dim: int = 128, width: int = 32):
        super().__init__()
        if latent_dim < 1 or width < 1:
            raise UserError(f"latent_dim and width must be >= 1, got {latent_dim} and {width}")
        self.latent_dim, self.width = latent_dim, width
        c = [width, 2 * width, 4 * width, 8 * width]
        self.encoder = nn.Sequential(
            *_down(3, c[0]), *_down(c[0], c[1]), *_down(c[1], c[2]), *_down(c[2], c[3]),
            nn.Flatten(), nn.Linear(c[3] * 4 * 4, latent_dim))
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, c[3] * 4 * 4), nn.Unflatten(1, (c[3], 4, 4)), nn.BatchNorm2d(c[3]), nn.ReLU(inplace=True),
            *_up(c[3], c[2]), *_up(c[2], c[1]), *_up(c[1], c[0]),
            nn.ConvTranspose2d(c[0], 3, 4, stride=2, padding=1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, with_code: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction of x; with `with_code`, (reconstruction, code) from the one encoder pass."""
        z = self.encoder(x)
        return (self.decoder(z), z) if with_code else self.decoder(z)


def model_config(model: AutoEncoder) -> dict:
    """The plain-data description needed to rebuild `model`."""
    return {"arch": "conv-ae-v1", "latent_dim": model.latent_dim, "width": model.width}


def build_model(config: dict) -> AutoEncoder:
    """Rebuild an AutoEncoder from `model_config` output."""
    if config.get("arch") != "conv-ae-v1":
        raise UserError(f"unknown architecture {config.get('arch')!r}; this toolkit builds 'conv-ae-v1'")
    return AutoEncoder(latent_dim=int(config["latent_dim"]), width=int(config["width"]))


def mean_square(diff: torch.Tensor) -> torch.Tensor:
    """The mean of diff**2 over every dimension but the first (one value per image). Written as a
    sum over dims, then a division: on CPU its backward is 3.5x faster than flatten(1).mean(1),
    which copies channels_last tensors, or pow(2).mean (bench.py measures it)."""
    return diff.square().sum(dim=tuple(range(1, diff.dim()))) / diff[0].numel()


def mse(recon: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error over pixels; reduction 'none' gives one value per image."""
    per_image = mean_square(recon - target)
    return per_image if reduction == "none" else per_image.mean()


def psnr(mse_value: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float(10 * torch.log10(torch.tensor(1.0 / max(mse_value, 1e-12))))


# VGG16 `features` indices of the ReLUs whose outputs the perceptual loss compares.
VGG_LAYERS = {"relu1_1": 1, "relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
VGG_DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_trunk() -> nn.Sequential:
    """VGG16's `features` module alone: building torchvision's whole VGG16 would also initialise
    its 120M-parameter classifier, seconds of work that the loss never uses."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"])


def vgg16_features(weights: str = "imagenet", seed: int = 0) -> nn.Sequential:
    """VGG16's convolutional trunk with ImageNet weights ('imagenet', through torchvision's
    weights API and torch's download cache), a state-dict file (a path), or a random
    initialisation from a fixed seed ('random', for offline runs only: the same for every
    endpoint, so all members of a loss group share one loss)."""
    from torchvision.models import VGG16_Weights

    features = _vgg16_trunk()
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in features.modules():
                if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        return features
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


class PerceptualLoss(nn.Module):
    """Mean over `layers` of the mean squared distance between VGG16 feature maps of the
    reconstruction and the target, after ImageNet normalisation. VGG is frozen, in eval mode, and
    cut after the deepest layer used; target features are computed without gradient."""

    def __init__(self, weights: str = "imagenet", layers: tuple[str, ...] = VGG_DEFAULT_LAYERS, seed: int = 0):
        super().__init__()
        unknown = [name for name in layers if name not in VGG_LAYERS]
        if unknown:
            raise UserError(f"unknown VGG layer(s) {unknown}; choose from {list(VGG_LAYERS)}")
        features = vgg16_features(weights, seed)
        self.cut = sorted(VGG_LAYERS[name] for name in layers)
        self.vgg = features[: self.cut[-1] + 1].eval()
        for p in self.vgg.parameters():
            p.requires_grad_(False)
        self.weights_name = weights if weights in ("imagenet", "random") else f"file:{Path(weights).name}"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.vgg.eval()  # VGG has no BatchNorm or dropout, but keep it frozen in eval mode regardless
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], (x - self.mean) / self.std
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in self.cut:
                out.append(x)
        return out

    def forward(self, recon: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                target_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        if target_features is None:
            with torch.no_grad():
                target_features = self.features(target)
        # the distance in fp32 even when the features came from a bf16 autocast
        per_image = sum(mean_square(a.float() - b.float()) for a, b in zip(self.features(recon), target_features))
        per_image = per_image / len(target_features)
        return per_image if reduction == "none" else per_image.mean()


def variant_settings(config: dict) -> dict:
    """The denoising and sparsity settings a run config records (a config without them: 0, 0)."""
    return {"noise": float(config.get("noise") or 0.0), "l1": float(config.get("l1") or 0.0)}


def group_name(loss: str, noise: float = 0.0, l1: float = 0.0) -> str:
    """A loss group's name: the loss, then +noise=SIGMA and +l1=LAMBDA when they are not 0 (e.g. mse+noise=0.1)."""
    return loss + (f"+noise={noise:g}" if noise else "") + (f"+l1={l1:g}" if l1 else "")


def parse_group(name: str) -> dict:
    """A group name (loss[+noise=SIGMA][+l1=LAMBDA]) as {"loss", "noise", "l1"}; group_name is its inverse."""
    loss, *parts = name.split("+")
    settings = {"loss": loss, "noise": 0.0, "l1": 0.0}
    try:
        if loss not in LOSSES:
            raise ValueError
        for part in parts:
            key, value = part.split("=")
            if key not in ("noise", "l1") or float(value) < 0 or not math.isfinite(float(value)):
                raise ValueError
            settings[key] = float(value)
    except ValueError:
        raise UserError(f"cannot read the loss group {name!r}; write a loss ({', '.join(LOSSES)}) with optional "
                        f"+noise=SIGMA and +l1=LAMBDA (both >= 0), e.g. mse+noise=0.1 or mse+l1=1e-3") from None
    return settings


def group_of(config: dict) -> str:
    """The group name of a run or evaluation config (one with `loss`, and `noise`/`l1` when not 0)."""
    return group_name(config["loss"], **variant_settings(config))


def make_loss(name: str, vgg_weights: str = "imagenet", vgg_layers: tuple[str, ...] = VGG_DEFAULT_LAYERS):
    """The training loss by name: a callable (recon, target, reduction='mean') -> tensor."""
    if name == "mse":
        return mse
    if name == "perceptual":
        return PerceptualLoss(vgg_weights, tuple(vgg_layers))
    raise UserError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def loss_from_config(config: dict, vgg_file: str | None = None):
    """Rebuild the loss a checkpoint was trained with from its config. An endpoint trained with
    VGG16 weights from a file records only the file's name: `vgg_file` must point to it again."""
    if config.get("loss") != "perceptual":
        return make_loss(config.get("loss"))
    weights = config.get("vgg_weights") or "imagenet"
    if weights.startswith("file:"):
        name = weights[len("file:"):]
        if vgg_file is None or Path(vgg_file).name != name:
            raise UserError(f"this perceptual loss used the VGG16 weight file {name}; pass it again with --vgg-weights PATH")
        weights = vgg_file
    return make_loss("perceptual", weights, tuple(config.get("vgg_layers") or VGG_DEFAULT_LAYERS))
