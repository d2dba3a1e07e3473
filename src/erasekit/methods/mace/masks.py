"""Where MACE's stage 2 takes its concept masks from: pluggable sources, the default needing nothing but the model.

MACE suppresses the concept's attention only inside the concept's pixels; the reference segments every training image
with Grounded-SAM (docs/methods/mace.md, "Mask sources"). A source here is any callable ``source(model, concept,
images, seeds) -> masks`` returning a ``[n, H, W]`` float tensor of 0/1 (or ``None``: the whole image, as the
reference does for styles):

- :class:`AttentionMasks` (default, offline): the model's own cross-attention to the concept tokens, read from one
  noised forward pass of each image at a few timesteps, min-max normalised and thresholded (DAAM-style).
- :class:`GroundedSAM`: GroundingDINO boxes for "<concept>." then SAM masks, their union (the official reference
  policy, with its thresholds 0.3 / 0.25 and a full mask when nothing is detected), loaded with ``transformers``
  from local folders only.
- :func:`no_masks`: the whole image (styles).
- the exact masks of a registered image source (``erasekit.sources.MASKS``, e.g. the benchmark world's), chosen by
  name in the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ...concepts import Concept
from ...errors import ModelLayoutError
from ...models.adapter import ModelAdapter
from .attention import cross_attention_probes, side
from .prompts import IMAGE_PROMPTS


class MaskSource(Protocol):
    def __call__(
        self, model: ModelAdapter, concept: Concept, images: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor | None:
        """Masks ``[n, H, W]`` (1 = concept) for ``images`` ``[n, 3, H, W]`` in [-1, 1], or ``None`` (whole image)."""


@torch.no_grad()
def encode_images(model: ModelAdapter, images: torch.Tensor) -> torch.distributions.Normal:
    """The VAE posterior of ``images`` (in [-1, 1]), scaled to the UNet's latent space."""
    vae = model.pipe.vae
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    scale = vae.config.scaling_factor
    return torch.distributions.Normal(dist.mean * scale, dist.std * scale)


@dataclass
class AttentionMasks:
    """The model's own cross-attention maps of the concept tokens, as masks.

    Each image is noised (fixed seed) at ``timesteps``, passed once through the UNet with the prompt it was
    generated from, and the attention of every pixel to the concept's tokens is averaged over heads, layers (each
    map upsampled to the image) and timesteps; the map is min-max normalised per image and thresholded.
    """

    threshold: float = 0.5
    timesteps: tuple[int, ...] = (200, 400, 600)
    seed: int = 0

    @torch.no_grad()
    def __call__(
        self, model: ModelAdapter, concept: Concept, images: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor:
        n, _, height, width = images.shape
        prompt = IMAGE_PROMPTS[concept.kind].format(concept.text)
        positions = model.phrase_positions(prompt, concept.text)
        cond = model.conditioning([prompt])[[0] * n]
        latents = encode_images(model, images).mean
        scheduler = model.pipe.scheduler
        maps = torch.zeros(n, height, width)
        count = 0

        def sink(_: int, probs: torch.Tensor) -> None:
            nonlocal maps, count
            heads = probs.shape[0] // n
            attention = probs[:, :, positions].mean(-1).reshape(n, heads, -1).mean(1).float().cpu()
            s = side(attention.shape[-1])
            maps += F.interpolate(attention.reshape(n, 1, s, s), size=(height, width), mode="bilinear")[:, 0]
            count += 1

        generator = torch.Generator().manual_seed(self.seed)
        with cross_attention_probes(model, sink):
            for t in self.timesteps:
                noise = torch.randn(latents.shape, generator=generator).to(latents)
                timestep = torch.full((n,), t, dtype=torch.long)
                noisy = scheduler.add_noise(latents, noise, timestep.to(latents.device))
                model.denoise(noisy, timestep.to(latents.device), cond)
        maps /= max(count, 1)
        low = maps.flatten(1).min(1).values[:, None, None]
        high = maps.flatten(1).max(1).values[:, None, None]
        return ((maps - low) / (high - low).clamp_min(1e-12) >= self.threshold).float()


@dataclass
class GroundedSAM:
    """GroundingDINO + SAM through ``transformers``, from local model folders (no download is attempted).

    ``detector`` and ``segmenter`` are folders holding e.g. ``IDEA-Research/grounding-dino-base`` and
    ``facebook/sam-vit-huge``. Unlike the reference (docs/methods/mace.md, "Mask sources"), images are preprocessed by
    each model's own processor, the concept name is passed whole, every box is used (union of masks), models load once.
    """

    detector: str
    segmenter: str
    box_threshold: float = 0.3
    text_threshold: float = 0.25

    def __post_init__(self) -> None:
        for name, path in (("detector", self.detector), ("segmenter", self.segmenter)):
            if not Path(path).is_dir():
                raise ModelLayoutError(
                    f"Grounded-SAM {name} folder '{path}' not found: download the weights (e.g. "
                    "IDEA-Research/grounding-dino-base and facebook/sam-vit-huge) to local folders and point "
                    "params.gsam_detector / params.gsam_segmenter at them, or use mask_source: attention"
                )
        self._models = None

    def _load(self):
        if self._models is None:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

            self._models = (
                AutoProcessor.from_pretrained(self.detector, local_files_only=True),
                AutoModelForZeroShotObjectDetection.from_pretrained(self.detector, local_files_only=True).eval(),
                SamProcessor.from_pretrained(self.segmenter, local_files_only=True),
                SamModel.from_pretrained(self.segmenter, local_files_only=True).eval(),
            )
        return self._models

    @torch.no_grad()
    def __call__(
        self, model: ModelAdapter, concept: Concept, images: torch.Tensor, seeds: Sequence[int]
    ) -> torch.Tensor | None:
        if concept.kind == "style":
            return None
        from PIL import Image

        det_proc, detector, sam_proc, sam = self._load()
        masks = []
        for image in images:
            pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            pil = Image.fromarray(pixels)
            inputs = det_proc(images=pil, text=f"{concept.text.lower()}.", return_tensors="pt")
            found = det_proc.post_process_grounded_object_detection(
                detector(**inputs),
                inputs.input_ids,
                threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=[pil.size[::-1]],
            )[0]
            boxes = found["boxes"].tolist()
            if not boxes:  # the official reference's policy: train on the whole image
                masks.append(torch.ones(pil.size[::-1]))
                continue
            sam_in = sam_proc(pil, input_boxes=[boxes], return_tensors="pt")
            out = sam(**sam_in, multimask_output=False)
            per_box = sam_proc.post_process_masks(
                out.pred_masks, sam_in["original_sizes"], sam_in["reshaped_input_sizes"]
            )[0]
            masks.append(per_box.reshape(-1, *per_box.shape[-2:]).any(0).float())
        return torch.stack(masks)


def no_masks(model: ModelAdapter, concept: Concept, images: torch.Tensor, seeds: Sequence[int]) -> None:
    """The whole image (the reference's behaviour for styles)."""
    return None
