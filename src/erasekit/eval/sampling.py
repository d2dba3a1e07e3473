"""Sampling: the one function that calls a pipeline (:func:`sample_batch`, for ``erasekit generate``, evaluations and
attacks), and the on-disk image cache that makes a killed run resume with nothing regenerated.

Every image is stored as a lossless PNG under the sha256 of everything that determines it: prompt, seed, guidance,
size, steps, the pipeline's weights and scheduler, and the edit applied (:func:`image_key`). Each row's latents come
from its own CPU ``torch.Generator`` seeded with the row's seed, so an image does not depend on which rows share its
batch, on the device, or on how rows are split across processes.

Several processes (``accelerate launch`` / ``torchrun``) share the rows by rank: process ``r`` of ``n`` generates rows
``r, r + n, ...`` into the shared cache; rank 0 then waits for the others' images. Rank and world size are read from
the ``RANK`` / ``WORLD_SIZE`` environment variables these launchers set, so accelerate is never imported.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..edits import Edit
from ..errors import ConfigError, EvaluationError
from ..io import atomic_file
from ..models.adapter import Conditioning, tensors_fingerprint
from ..progress import progress_bar
from .prompts import PromptRow

SEEDING = "one CPU torch.Generator per image, manual_seed(row seed)"


@dataclass(frozen=True)
class ImageSpec:
    """The concrete sampling settings of one image (a row with the config's defaults filled in).

    ``steps`` are sampler steps; the field keeps its name because it is part of every cached image's key.
    """

    prompt: str
    seed: int
    guidance: float
    width: int
    height: int
    steps: int

    @property
    def batch_group(self) -> tuple[float, int, int, int]:
        """Images can share a pipeline call only if these settings are equal."""
        return (self.guidance, self.width, self.height, self.steps)


def native_size(pipe) -> int:
    """The pipeline's default resolution in pixels (UNet sample size times the VAE's scale factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def image_spec(row: PromptRow, sampling_steps: int, guidance: float, size: int) -> ImageSpec:
    """Fill the row's empty settings with the defaults (``size``: square, in pixels)."""
    return ImageSpec(
        prompt=row.prompt,
        seed=row.seed,
        guidance=row.guidance if row.guidance is not None else guidance,
        width=row.width or size,
        height=row.height or size,
        steps=row.steps or sampling_steps,
    )


def pipeline_fingerprint(pipe) -> str:
    """sha256 of the UNet, text encoder(s) and VAE weights and the scheduler config: which model made an image.

    SDXL adds its second text encoder and how it encodes the empty negative prompt (``force_zeros_for_empty_prompt``);
    neither exists on SD1.x/2.x, whose fingerprints are what they always were.
    """
    tensors = {}
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        if getattr(pipe, part, None) is not None:
            tensors.update({f"{part}.{k}": v for k, v in getattr(pipe, part).state_dict().items()})
    settings = {"class": type(pipe.scheduler).__name__, **pipe.scheduler.config}
    if "force_zeros_for_empty_prompt" in pipe.config:
        settings["force_zeros_for_empty_prompt"] = pipe.config.force_zeros_for_empty_prompt
    scheduler = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(f"{tensors_fingerprint(tensors)}|{scheduler}".encode()).hexdigest()


def edit_fingerprint(edit: Edit | None) -> str | None:
    """:meth:`Edit.fingerprint`, or ``None`` for the unedited model."""
    return None if edit is None else edit.fingerprint()


def image_key(spec: ImageSpec, model_fingerprint: str, edit_fp: str | None) -> str:
    """The cache key of one image."""
    payload = {**asdict(spec), "model": model_fingerprint, "edit": edit_fp, "seeding": SEEDING}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ImageCache:
    """PNG files under ``root/<key[:2]>/<key>.png``, written atomically (a killed write leaves no file)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> Image.Image:
        with Image.open(self.path(key)) as image:
            return image.convert("RGB")

    def save(self, key: str, image: Image.Image) -> None:
        with atomic_file(self.path(key)) as tmp:
            image.convert("RGB").save(tmp, format="PNG")


def sample_batch(
    pipe, specs: Sequence[ImageSpec], embeds: Mapping[str, Conditioning] | None = None
) -> list[Image.Image]:
    """One pipeline call for images that share guidance, size and steps; each has its own seeded generator.

    With ``embeds``, each spec's ``prompt`` names its text conditioning (one row: ``[1, 77, d]``, and on SDXL the
    pooled embedding ``[1, p]``), fed as ``prompt_embeds`` (and ``pooled_prompt_embeds``) in place of the prompt. The
    unconditional half stays the pipeline's own, computed exactly as for a text prompt (SD: the "" encoding; SDXL:
    zeros where ``force_zeros_for_empty_prompt``, else the "" encoding), so an image from a prompt's own conditioning
    is the image of the prompt.
    """
    first = specs[0]
    if embeds is None:
        inputs: dict[str, Any] = {"prompt": [s.prompt for s in specs]}
    else:
        cond = Conditioning.cat([embeds[s.prompt] for s in specs]).to(pipe.unet.device, pipe.text_encoder.dtype)
        inputs = {"prompt_embeds": cond.hidden}
        if cond.pooled is not None:
            inputs["pooled_prompt_embeds"] = cond.pooled
    out = pipe(
        **inputs,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance,
        height=first.height,
        width=first.width,
        generator=[torch.Generator("cpu").manual_seed(s.seed) for s in specs],
        output_type="pil",
    )
    return list(out.images)


def before_after(
    pipe, edit: Edit, prompts: Sequence[str], seed: int, sampling_steps: int, guidance: float, size: int | None = None
) -> tuple[list[Image.Image], list[Image.Image]]:
    """(base, erased) images of ``prompts``, each from the same seed with and without the edit; ``size`` (square,
    pixels) defaults to the pipeline's native one. The pipeline is left as it was.

    The edit is applied first, so a mismatching base model is reported before any sampling time is spent. Each image
    is its own pipeline call (memory as for one image, whatever the number of prompts).
    """
    if size is not None and (size <= 0 or size % 8):
        raise ConfigError(f"size: must be a positive multiple of 8, got {size}")
    size = size or native_size(pipe)
    specs = [ImageSpec(prompt, seed, guidance, size, size, sampling_steps) for prompt in prompts]
    edit.apply(pipe)
    try:
        erased = [sample_batch(pipe, [spec])[0] for spec in specs]
    finally:
        edit.remove(pipe)
    return [sample_batch(pipe, [spec])[0] for spec in specs], erased


def generate(
    pipe,
    specs: Sequence[ImageSpec],
    keys: Sequence[str],
    cache: ImageCache,
    batch_size: int = 8,
    sampler: Callable[[Any, Sequence[ImageSpec]], list[Image.Image]] = sample_batch,
    rank: int = 0,
    world: int = 1,
    description: str = "generating",
    progress: bool = True,
) -> int:
    """Generate this process's share of the images not yet in ``cache``; return how many were generated.

    Each image is saved as soon as its batch returns, so an interrupted run loses at most one batch.
    """
    first_row = {}  # a row repeated in a set (same prompt and seed) is generated once
    for i in range(rank, len(specs), world):
        first_row.setdefault(keys[i], i)
    todo = sorted((i for key, i in first_row.items() if key not in cache), key=lambda i: specs[i].batch_group)
    batches = []
    for _, group in groupby(todo, key=lambda i: specs[i].batch_group):
        group = list(group)
        batches += [group[s : s + batch_size] for s in range(0, len(group), batch_size)]
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(todo))
        for batch in batches:
            images = sampler(pipe, [specs[i] for i in batch])
            for i, image in zip(batch, images, strict=True):
                cache.save(keys[i], image)
            bar.advance(task, len(batch))
    return len(todo)


def wait_for(cache: ImageCache, keys: Sequence[str], timeout: float, poll: float = 5.0) -> None:
    """Block until every key is in the cache (the other ranks' images); raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (missing := sum(k not in cache for k in keys)) and time.monotonic() < deadline:
        time.sleep(poll)
    if missing:
        raise EvaluationError(
            f"{missing} images are still missing after waiting {timeout:.0f} s for the other processes; "
            "did one of them fail? Re-run: cached images are kept"
        )
