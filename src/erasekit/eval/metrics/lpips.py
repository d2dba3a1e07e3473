"""LPIPS between an erased model's image and the unerased model's image of the same row (UCE/ESD/RECE/DuMo).

LPIPS v0.1 with the AlexNet backbone (Zhang et al., CVPR 2018): images in [-1, 1] are shifted and scaled, AlexNet
features after each of its five ReLU stages are unit-normalized over channels, their squared difference is weighted
per channel by the learned linear layer, averaged over space and summed over stages. RECE and DuMo resize both images
to 64 x 64 first (their released evaluation code; docs/evaluation.md, "lpips"); ``size`` pins that.

Reported per role: LPIPS_e on erased-concept rows (higher = more changed), LPIPS_u on the others (lower = less
collateral damage). The lpips package needs torchvision, so the network is written here and loads two local files:
torchvision's AlexNet state dict (``backbone``, e.g. ``alexnet-owt-7be5be79.pth``) and lpips' ``weights/v0.1/alex.pth``
(``linear``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Metric, Variant, batches, load_weights, register

CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPSAlex(nn.Module):
    """AlexNet-LPIPS v0.1, with torchvision's AlexNet ``features`` layer indices so its state dict loads as is."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    STAGE_ENDS = (1, 4, 7, 9, 11)
    """Indices of the ReLUs whose outputs LPIPS compares."""

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.STAGE_ENDS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per pair; ``a`` and ``b`` are ``[N, 3, H, W]`` in [-1, 1]."""
        total = torch.zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, self.stages(a), self.stages(b), strict=True):
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_files(cls, backbone: str, linear: str) -> LPIPSAlex:
        """Load torchvision's AlexNet weights (``features.*``) and lpips' linear layers (``lin{k}.model.1.weight``)."""
        net = cls()
        state = torch.load(backbone, map_location="cpu", weights_only=True)
        net.features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
        lins = torch.load(linear, map_location="cpu", weights_only=True)
        for k, lin in enumerate(net.lins):
            lin.weight.data.copy_(lins[f"lin{k}.model.1.weight"])
        return net.eval()


@cache
def _lpips(backbone: str, linear: str) -> LPIPSAlex:
    return load_weights(
        lambda: LPIPSAlex.from_files(backbone, linear),
        "LPIPS",
        f"{backbone}, {linear}" if backbone and linear else "",
        "metric_options.lpips.backbone and metric_options.lpips.linear",
    )


def to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


@dataclass
class LPIPSOptions:
    backbone: str | None = None
    linear: str | None = None
    size: int = 64
    batch_size: int = 32


@register
class LPIPS(Metric):
    """Mean LPIPS to the base model's image of the same row, per role."""

    name = "lpips"
    options_class = LPIPSOptions

    needs_base = True

    def prepare(self) -> None:
        _lpips(self.options.backbone or "", self.options.linear or "")

    @torch.no_grad()
    def compute(self, variant: Variant) -> dict[str, Any]:
        o = self.options
        net = _lpips(o.backbone or "", o.linear or "")
        scores = np.zeros(len(variant.rows))
        for chunk in batches(range(len(variant.rows)), o.batch_size):
            a = to_tensor(variant.images(chunk), o.size)
            b = to_tensor(variant.base.images(chunk), o.size)
            scores[chunk] = net(a, b).double().numpy()
        return {"by_role": variant.mean_by_role(scores), "per_row": [{"lpips": float(s)} for s in scores]}
