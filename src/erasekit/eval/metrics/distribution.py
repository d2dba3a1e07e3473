"""FID and KID: how far a model's image distribution moved, from image features.

FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))  (Fréchet distance of Gaussians fitted to features).
KID = unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets (clean-fid:
100 subsets of at most 1000); the papers print KID x 100 (GLoCE), we store it unscaled.

Features (``features`` option):
- ``inception``: clean-fid's / StyleGAN2-ADA's TorchScript Inception-v3 (``inception-2015-12-05.pt``), images resized
  to 299 px with PIL bicubic as clean-fid's "clean" mode does; no torchvision needed;
- ``clip``: CLIP image embeddings (``model``: a CLIPModel folder or hub id), as in clean-fid's CLIP-FID;
- ``world``: the evaluation classifier's ``features(images)`` (the benchmark world's: the pooled last conv layer of
  its object, style, character and explicit networks, 256 values); for a classifier without ``features`` but with
  ``scores(images, head)``, the class probabilities of those heads side by side.

The reference is the unerased model's images of the same rows (``reference: base``; the "drift" FID) or a folder of
real images (e.g. the COCO-30k ones). The compared rows default to the ``retain`` role: what should not change.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...errors import ConfigError, MetricUnavailableError
from .base import Metric, Variant, load_weights, missing_classifier, register, require
from .clip import DEFAULT_CLIP, clip_encoder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WORLD_HEADS = ("object", "style", "character", "explicit")
INCEPTION_SIZE = 299
INCEPTION_MISSING = (
    "FID/KID with Inception features need clean-fid's TorchScript weights (inception-2015-12-05.pt): "
    "set model to that file, or use features: clip / world"
)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), with scipy's matrix square root."""
    linalg = require("scipy.linalg")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular covariances (fewer images than features) are expected, not an error
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Near-singular product (few images, many features): regularize as pytorch-fid does.
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows are images)."""
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("FID needs at least 2 images on each side")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def kid_from_features(
    a: np.ndarray, b: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """Kernel Inception Distance: mean unbiased polynomial-kernel MMD^2 over random subsets (clean-fid's estimator)."""
    n = min(len(a), len(b), max_subset_size)
    if n < 2:
        raise ConfigError("KID needs at least 2 images on each side")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), n, replace=False)]
        y = b[rng.choice(len(b), n, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        total += (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (n * (n - 1)) - 2 * k_xy.mean()
    return float(total / num_subsets)


@cache
def _inception(path: str) -> Any:
    return load_weights(lambda: torch.jit.load(path, map_location="cpu").eval(), "Inception", path, "model")


def extract_features(
    kind: str, model: str | None, images: Sequence[Image.Image], classifier: Any = None, batch_size: int = 32
) -> np.ndarray:
    """Features of ``images`` from the ``kind`` extractor (see the module docstring)."""
    chunks = [images[s : s + batch_size] for s in range(0, len(images), batch_size)]
    if kind == "inception":
        if not model:
            raise MetricUnavailableError(INCEPTION_MISSING)
        net = _inception(model)
        out = []
        for chunk in chunks:
            arrays = [np.asarray(im.resize((INCEPTION_SIZE,) * 2, Image.Resampling.BICUBIC)) for im in chunk]
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                out.append(net(batch, return_features=True).double().numpy())
        return np.concatenate(out)
    if kind == "clip":
        encoder = clip_encoder(model or DEFAULT_CLIP, "model")
        return np.concatenate([encoder.images(chunk) for chunk in chunks])
    if kind == "world":
        if classifier is None:
            raise missing_classifier("fid/kid with features: world")
        return np.concatenate([classifier_features(classifier, list(chunk)) for chunk in chunks])
    raise ConfigError(f"unknown features '{kind}': use inception, clip or world")


def classifier_features(classifier: Any, images: list[Image.Image]) -> np.ndarray:
    """The classifier's ``features(images)``, or else its class probabilities of every whole-image head, side by side
    (the world classifiers' public ``scores(images, head)``)."""
    if hasattr(classifier, "features"):
        return np.asarray(classifier.features(images), dtype=np.float64)
    if hasattr(classifier, "scores"):
        return np.concatenate([np.asarray(classifier.scores(images, h), np.float64) for h in WORLD_HEADS], axis=1)
    raise MetricUnavailableError("features: world needs a classifier with features(images) or scores(images, head)")


def _folder_images(folder: str) -> list[Image.Image]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"reference folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [Image.open(p).convert("RGB") for p in paths]


@dataclass
class DistributionOptions:
    features: str = "inception"
    model: str | None = None
    reference: str = "base"
    roles: list[str] = field(default_factory=lambda: ["retain"])
    batch_size: int = 32


class _DistributionMetric(Metric):
    """Shared by FID and KID: features of the variant's rows and of the reference, memoized per evaluation."""

    options_class = DistributionOptions

    def _features(self, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        indices = variant.indices(roles=o.roles)

        def features(keys: list[str], load) -> np.ndarray:
            memo_key = (o.features, o.model, *keys)
            if memo_key not in variant.memo:
                variant.memo[memo_key] = extract_features(o.features, o.model, load(), variant.classifier, o.batch_size)
            return variant.memo[memo_key]

        ours = features([variant.keys[i] for i in indices], lambda: variant.images(indices))
        if o.reference == "base":
            base = variant.base
            theirs = features([base.keys[i] for i in indices], lambda: base.images(indices))
        else:
            theirs = features([o.reference], lambda: _folder_images(o.reference))
        return ours, theirs

    @property
    def needs_base(self) -> bool:
        return self.options.reference == "base"

    @property
    def needs_classifier(self) -> bool:
        return self.options.features == "world"

    def prepare(self) -> None:
        require("scipy.linalg")
        if self.options.features == "inception":
            if not self.options.model:
                raise MetricUnavailableError(INCEPTION_MISSING)
            _inception(self.options.model)
        elif self.options.features == "clip":
            clip_encoder(self.options.model or DEFAULT_CLIP, "model")
        elif self.options.features != "world":
            raise ConfigError(f"unknown features '{self.options.features}': use inception, clip or world")


@register
class FID(_DistributionMetric):
    name = "fid"

    def compute(self, variant: Variant) -> dict[str, Any]:
        ours, theirs = self._features(variant)
        return {"fid": fid_from_features(ours, theirs), "n": len(ours), "n_reference": len(theirs)}


@dataclass
class KIDOptions(DistributionOptions):
    num_subsets: int = 100
    max_subset_size: int = 1000
    seed: int = 0


@register
class KID(_DistributionMetric):
    name = "kid"
    options_class = KIDOptions

    def compute(self, variant: Variant) -> dict[str, Any]:
        ours, theirs = self._features(variant)
        o = self.options
        kid = kid_from_features(ours, theirs, o.num_subsets, o.max_subset_size, o.seed)
        return {"kid": kid, "n": len(ours), "n_reference": len(theirs)}
