"""End to end on the shipped benchmark world: UCE erases one object and leaves the others."""

from __future__ import annotations

import pytest
import torch

from erasekit import erase, load_pipeline
from erasekit.world import load_classifiers
from erasekit.world.prompts import SAMPLING
from erasekit.world.spec import OBJECTS

ERASED = "car"
SEEDS = range(6)


def _object_accuracy(pipe, classifiers) -> dict[str, float]:
    """Per object, the share of 'a photo of a <object>' images (fixed seeds) the world classifier labels correctly."""
    names = [o.name for o in OBJECTS]
    prompts = [f"a photo of a {name}" for name in names for _ in SEEDS]
    generators = [torch.Generator().manual_seed(seed) for _ in names for seed in SEEDS]
    images = pipe(
        prompts,
        num_inference_steps=int(SAMPLING["steps"]),
        guidance_scale=float(SAMPLING["guidance"]),
        generator=generators,
    ).images
    predictions = classifiers.predict(images, "object")
    hits = {name: 0 for name in names}
    for prompt, predicted in zip(prompts, predictions, strict=True):
        hits[prompt.removeprefix("a photo of a ")] += predicted == prompt.removeprefix("a photo of a ")
    return {name: count / len(SEEDS) for name, count in hits.items()}


@pytest.mark.slow
def test_uce_erases_one_world_object_and_keeps_the_others():
    torch.set_num_threads(1)
    pipe = load_pipeline("erasekit:world")
    classifiers = load_classifiers()
    before = _object_accuracy(pipe, classifiers)
    others = [name for name in before if name != ERASED]
    edit = erase(pipe, [{"text": ERASED, "kind": "object"}], method="uce", preserve=others)
    edit.apply(pipe)
    after = _object_accuracy(pipe, classifiers)
    kept_before = sum(before[n] for n in others) / len(others)
    kept_after = sum(after[n] for n in others) / len(others)
    assert before[ERASED] - after[ERASED] >= 0.5, (before, after)
    assert kept_before - kept_after <= 0.10, (before, after)
