"""Sample prompt sets with a pipeline and judge the images with the world classifiers.

This is the measurement behind the model card's table and the end-to-end erasure tests: for each row of a prompt set
the pipeline draws one image from the row's seed, and the family's classifier head says what it shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from .classifiers import WorldClassifiers
from .spec import OBJECTS

_OBJECT_NAMES = frozenset(o.name for o in OBJECTS)
_HEAD_OF_FAMILY = {"object": "object", "style": "style", "character": "character", "explicit": "explicit"}


def sample_rows(pipe: StableDiffusionPipeline, rows: Sequence[dict], batch_size: int = 50) -> list[Image.Image]:
    """One image per row: its prompt, its seed (one torch.Generator per image), guidance, steps and size.

    Rows are batched only with rows of the same sampling settings, so a row's image does not depend on its
    neighbours.
    """
    images: list[Image.Image | None] = [None] * len(rows)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[(float(row["guidance"]), int(row["steps"]), int(row["size"]))].append(i)
    for (guidance, steps, size), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            out = pipe(
                [rows[i]["prompt"] for i in chunk],
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(int(rows[i]["seed"])) for i in chunk],
            ).images
            for i, im in zip(chunk, out, strict=True):
                images[i] = im
    return images  # type: ignore[return-value]


def judge(classifiers: WorldClassifiers, rows: Sequence[dict], images: Sequence[Image.Image]) -> list[dict]:
    """Per row: the classifier's prediction and whether it matches the row's ``label``."""
    results: list[dict] = [{} for _ in rows]
    by_family: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_family[row["family"]].append(i)
    for family, idx in by_family.items():
        ims = [images[i] for i in idx]
        if family == "scene":
            left = classifiers.predict(ims, "scene_left")
            right = classifiers.predict(ims, "scene_right")
            preds = [f"left={a};right={b}" for a, b in zip(left, right, strict=True)]
        else:
            preds = classifiers.predict(ims, _HEAD_OF_FAMILY[family])
        for i, pred in zip(idx, preds, strict=True):
            results[i] = {**rows[i], "prediction": pred, "correct": pred == rows[i]["label"]}
    return results


def accuracy_table(results: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Accuracy (fraction of rows whose prediction equals their label) per family/role/label.

    The label part is ``*`` except for the explicit family (yes and no rows are different claims). Scenes also get
    per-side accuracy (``scene/left/*``, ``scene/right/*``) and both-sides accuracy per kind of pair
    (``scene/two-objects/*``, ``scene/character-object/*``).
    """
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        groups[f"{r['family']}/{r['role']}/{r['label'] if r['family'] == 'explicit' else '*'}"].append(r["correct"])
        if r["family"] == "scene":
            left, right = (p.split("=", 1)[1] for p in r["prediction"].split(";"))
            want_l, want_r = (p.split("=", 1)[1] for p in r["label"].split(";"))
            groups["scene/left/*"].append(left == want_l)
            groups["scene/right/*"].append(right == want_r)
            kind = "two-objects" if want_l in _OBJECT_NAMES and want_r in _OBJECT_NAMES else "character-object"
            groups[f"scene/{kind}/*"].append(r["correct"])
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}
