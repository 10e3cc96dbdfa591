"""The convolutional autoencoder and its losses (model code only: no file or data I/O).

Images are 3x64x64 in [0, 1]. The encoder halves the resolution four times with strided
convolutions (64 -> 4) and maps the 4x4 feature map to the code with one linear layer; the
decoder mirrors it. BatchNorm follows every hidden convolution, as in the paper's VGG/ResNet
curves, so BatchNorm statistics along a curve have to be recomputed (see curves.update_bn).
"""
from __future__ import annotations

import torch
import torch.nn as nn


ARCH = "conv-ae-v1"  # the architecture tag checkpoints record
LOSSES = ("mse", "perceptual")  # a loss group is one of them, optionally denoising and/or sparse (group_name)


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    # kernel 4, stride 2: every output pixel gets as many taps (no checkerboard); half the cost of upsample + 3x3 conv
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class AutoEncoder(nn.Module):
    """Conv autoencoder: 3x64x64 -> `latent_dim` -> 3x64x64; `width` is the first layer's channels."""

    def __init__(self, latent_dim: int = 128, width: int = 32):
        super().__init__()
        if latent_dim < 1 or width < 1:
            raise ValueError(f"latent_dim and width must be >= 1, got {latent_dim} and {width}")
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

    def forward(self, x: torch.Tensor, with_code: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction of x; with `with_code`, (reconstruction, code) from the one encoder pass."""
        z = self.encoder(x)
        return (self.decoder(z), z) if with_code else self.decoder(z)


def model_config(model: AutoEncoder) -> dict:
    """The plain-data description needed to rebuild `model`."""
    return {"arch": ARCH, "latent_dim": model.latent_dim, "width": model.width}


def build_model(config: dict) -> AutoEncoder:
    """Rebuild an AutoEncoder from `model_config` output."""
    if config.get("arch") != ARCH:
        raise ValueError(f"unknown architecture {config.get('arch')!r}; this toolkit builds {ARCH!r}")
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


def vgg16_trunk(seed: int | None = None) -> nn.Sequential:
    """VGG16's convolutional trunk (torchvision's `features`) alone: building the whole VGG16 would also initialise
    its 120M-parameter classifier, seconds of work the loss never uses. With `seed`, initialised as torchvision
    does from that seed (the "random" weights of offline runs: the same for every endpoint of a group). The
    ImageNet or file weights are loaded by lib/vgg.py (vgg16_features)."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in features.modules():
                if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
    return features


class PerceptualLoss(nn.Module):
    """Mean over `layers` of the mean squared distance between VGG16 feature maps of the
    reconstruction and the target, after ImageNet normalisation. VGG is frozen, in eval mode, and
    cut after the deepest layer used; target features are computed without gradient. `features` is VGG16's trunk
    (vgg16_trunk, with weights loaded into it) and `weights_name` what the configs record of its weights."""

    def __init__(self, features: nn.Sequential, layers: tuple[str, ...] = VGG_DEFAULT_LAYERS, weights_name: str = "random"):
        super().__init__()
        unknown = [name for name in layers if name not in VGG_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG layer(s) {unknown}; choose from {list(VGG_LAYERS)}")
        self.cut = sorted(VGG_LAYERS[name] for name in layers)
        self.vgg = features[: self.cut[-1] + 1].eval()
        for p in self.vgg.parameters():
            p.requires_grad_(False)
        self.weights_name = weights_name
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


def group_of(config: dict) -> str:
    """The group name of a run or evaluation config (one with `loss`, and `noise`/`l1` when not 0)."""
    return group_name(config["loss"], **variant_settings(config))
