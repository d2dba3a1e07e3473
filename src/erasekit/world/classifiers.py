"""Ground-truth classifiers of the world: the offline judges of every erasure experiment.

Small CNNs trained on generator images, whose labels are exact, play the roles that ImageNet classifiers, style
classifiers, celebrity detectors and NudeNet play in the papers. One network per task:

=============  =========================================  ============================================
head           classes                                    trained on
=============  =========================================  ============================================
object         the 10 object classes                      object family
style          the 20 painters and "none" (plain drawing)  style family
character      the 120 characters                         character family
explicit       "no" / "yes" (bare torso)                  explicit family, plus other families as "no"
scene_left     objects + characters (130)                 left half (16x32) of scene images
scene_right    same network as scene_left                 right half of scene images
=============  =========================================  ============================================

Training augments every image (shift, blur, noise, colour jitter) so the judges stay right on the slightly soft
images a diffusion model samples. Held-out accuracy (images of seeds never trained on) is stored with the weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError
from ..io import atomic_file
from .generator import FAMILIES, SCENE_SUBJECTS, generate
from .spec import ARTISTS, CHARACTERS, IMAGE_SIZE, OBJECTS

HEADS: tuple[str, ...] = ("object", "style", "character", "explicit", "scene_left", "scene_right")
_NETWORKS: dict[str, tuple[str, ...]] = {
    "object": tuple(o.name for o in OBJECTS),
    "style": (*ARTISTS, "none"),
    "character": tuple(c.name for c in CHARACTERS),
    "explicit": ("no", "yes"),
    "scene": SCENE_SUBJECTS,
}
_NETWORK_OF_HEAD = {h: ("scene" if h.startswith("scene") else h) for h in HEADS}
_HALF = IMAGE_SIZE // 2


def default_path() -> Path:
    """The shipped classifier weights (``data/world/classifiers.safetensors``)."""
    return Path(str(resources.files("erasekit") / "data" / "world" / "classifiers.safetensors"))


class SmallCNN(nn.Module):
    """Three 3x3 conv layers and two 2x poolings, then a 4x4 spatial grid (so "yellow above red" differs from "red
    above yellow") and a linear layer: ~0.1 M parameters, any input size, ~3 M multiply-adds per image."""

    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.head = nn.Linear(4 * w * 16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (any size, as a pipeline returns them) -> (N, 3, 32, 32) in [0, 1]."""
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _crop(x: torch.Tensor, head: str) -> torch.Tensor:
    if head == "scene_left":
        return x[..., :_HALF]
    if head == "scene_right":
        return x[..., _HALF:]
    return x


FEATURE_HEADS = ("object", "style", "character", "explicit")


class WorldClassifiers:
    """The world's judges. ``predict(images, head)`` -> labels; ``scores(images, head)`` -> probabilities."""

    def __init__(self, networks: dict[str, SmallCNN], accuracy: dict[str, float] | None = None):
        self.networks = networks
        self.accuracy = accuracy or {}
        for net in networks.values():
            net.eval()

    @staticmethod
    def labels(head: str) -> tuple[str, ...]:
        """The classes of ``head``, in the column order of ``scores``."""
        if head not in _NETWORK_OF_HEAD:
            raise ConfigError(f"unknown classifier head '{head}'; choose one of {', '.join(HEADS)}")
        return _NETWORKS[_NETWORK_OF_HEAD[head]]

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], head: str) -> np.ndarray:
        """(N, n_classes) class probabilities; for ``explicit`` column 1 is P(attribute present)."""
        self.labels(head)
        if len(images) == 0:
            return np.zeros((0, len(self.labels(head))), dtype=np.float32)
        net = self.networks[_NETWORK_OF_HEAD[head]]
        x = _crop(_to_tensor(images), head)
        out = [F.softmax(net(x[i : i + 256]), dim=1) for i in range(0, len(x), 256)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, 256) image features for FID/KID: the last conv layer of the object, style, character and explicit
        networks, averaged over space, side by side (the world's analogue of Inception's pool features)."""
        nets = [self.networks[_NETWORK_OF_HEAD[h]] for h in FEATURE_HEADS]
        if len(images) == 0:
            return np.zeros((0, sum(net.head.in_features // 16 for net in nets)), dtype=np.float32)
        x = _to_tensor(images)
        chunks = [x[i : i + 256] for i in range(0, len(x), 256)]
        return torch.cat([torch.cat([net.features(c).mean((2, 3)) for net in nets], 1) for c in chunks]).numpy()

    def predict(self, images: Sequence[Image.Image], head: str) -> list[str]:
        """The most likely label of each image for ``head`` ("yes"/"no" for ``explicit``)."""
        labels = self.labels(head)
        return [labels[i] for i in self.scores(images, head).argmax(axis=1)]

    def save(self, path: str | Path) -> Path:
        tensors = {f"{name}.{k}": v.contiguous() for name, net in self.networks.items() for k, v in
                   net.state_dict().items()}  # fmt: skip
        metadata = {"labels": json.dumps(_NETWORKS), "accuracy": json.dumps(self.accuracy)}
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return Path(path)


def load_classifiers(path: str | Path | None = None) -> WorldClassifiers:
    """Load the world classifiers (the shipped ones by default)."""
    from safetensors import safe_open

    path = Path(path) if path is not None else default_path()
    if not path.exists():
        raise ConfigError(f"no world classifiers at '{path}'; train them with `erasekit world train-classifiers`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    labels = json.loads(meta["labels"])
    state = load_file(str(path))
    networks = {}
    for name, classes in labels.items():
        net = SmallCNN(len(classes))
        net.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")})
        networks[name] = net
    return WorldClassifiers(networks, json.loads(meta.get("accuracy", "{}")))


# --- training ----------------------------------------------------------------------------------------------------


def _examples(network: str, seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and label indices for one network, drawn from the generator at ``seeds``."""
    classes = {c: i for i, c in enumerate(_NETWORKS[network])}
    images, labels = [], []
    for seed in seeds:
        if network == "scene":
            s = generate("scene", seed)
            x = _to_tensor([s.image])[0]
            images += [x[..., :_HALF], x[..., _HALF:]]
            labels += [classes[s.labels["scene_left"]], classes[s.labels["scene_right"]]]
            continue
        if network == "explicit" and seed % 10 >= 7:  # 30% negatives from the other families
            s = generate(FAMILIES[seed % 4 if seed % 4 != 3 else 4], seed)
            label = "no"
        else:
            s = generate(network, seed)
            label = s.labels[network]
        images.append(_to_tensor([s.image])[0])
        labels.append(classes[label])
    return torch.stack(images), torch.tensor(labels)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift by up to 2 px, blur (sigma up to 1 px), colour jitter and pixel noise: model samples are soft."""
    n = len(x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    sigma = float(torch.rand(1, generator=g)) * 1.0
    if sigma > 0.2:
        k = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-(k**2) / (2 * sigma**2))
        k = k / k.sum()
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
        x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
    x = x * (1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)) + 0.05 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = x + 0.03 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def train_classifiers(
    out: str | Path,
    seed: int = 0,
    n_train: int = 20_000,
    n_test: int = 2_000,
    steps: int = 2_000,
    batch: int = 128,
    log: Callable[[str], None] = print,
) -> WorldClassifiers:
    """Train every network on generator images and measure held-out accuracy on seeds never trained on."""
    networks, accuracy = {}, {}
    train_seeds = range(seed * 10_000_000, seed * 10_000_000 + n_train)
    test_seeds = range(seed * 10_000_000 + 5_000_000, seed * 10_000_000 + 5_000_000 + n_test)
    for name, classes in _NETWORKS.items():
        t0 = time.time()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x, y = _examples(name, train_seeds)
        net = SmallCNN(len(classes))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        net.train()
        for _ in range(steps):
            idx = torch.randint(len(x), (batch,), generator=g)
            loss = F.cross_entropy(net(_augment(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        xt, yt = _examples(name, test_seeds)
        with torch.no_grad():
            pred = torch.cat([net(xt[i : i + 512]).argmax(1) for i in range(0, len(xt), 512)])
        accuracy[name] = float((pred == yt).float().mean())
        networks[name] = net
        log(f"classifier {name}: held-out accuracy {accuracy[name]:.4f} ({len(xt)} images, {time.time() - t0:.0f}s)")
    clf = WorldClassifiers(networks, accuracy)
    clf.save(out)
    return clf
