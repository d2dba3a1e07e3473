"""``erasekit demo``: erase one object from the benchmark world with UCE and show, with numbers, that it worked.

The whole loop of the library on the model shipped with it, offline and in a few CPU minutes:
fit UCE -> save the artifact -> generate the world's object prompts with and without it (cached) -> judge them with the
world's ground-truth classifiers -> efficacy / specificity / generality -> before/after grid + HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

WORLD = "erasekit:world"


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and the object accuracies (0-1) of the base and the erased model."""

    edit: Path
    grid: Path
    report: Path
    accuracy: dict[str, dict[str, float]]  # variant -> role (erase, synonym, retain) -> accuracy
    score: dict[str, float]  # variant -> H_o


def run_demo(concept: str = "car", output: str | Path = "runs/demo", limit: int | None = None, progress: bool = True):
    """Run the demo and return a :class:`DemoResult`; re-running reuses every cached image.

    Runs torch on one thread: the world model's ops are so small that a second thread costs more than it saves, and
    on a busy 2-core machine it was 10x slower (measured).
    """
    import torch

    torch.set_num_threads(1)
    from .api import erase
    from .edits import Edit
    from .eval.run import EvalConfig, evaluate
    from .eval.sampling import before_after
    from .io import atomic_file
    from .models import load_pipeline
    from .report import image_grid, write_report
    from .world import load_classifiers
    from .world.prompts import SAMPLING
    from .world.spec import OBJECTS

    objects = {o.name: o for o in OBJECTS}
    if concept not in objects:
        raise ConfigError(f"demo: '{concept}' is not a world object; choose one of {', '.join(objects)}")
    output = Path(output)
    pipe = load_pipeline(WORLD)
    target = objects[concept]

    edit_path = output / "edit.safetensors"
    if edit_path.exists():
        edit = Edit.load(edit_path)
    else:
        others = [o.name for o in OBJECTS if o.name != concept]  # the usual UCE recipe: preserve the neighbours
        concepts = [{"text": concept, "kind": "object", "synonyms": list(target.synonyms)}]
        edit = erase(pipe, concepts, method="uce", preserve=others)
        edit.info["model"] = WORLD
        edit.save(edit_path)

    sampling_steps, guidance = int(SAMPLING["steps"]), float(SAMPLING["guidance"])
    config = EvalConfig(
        model=WORLD,
        prompts=["world:objects"],
        edits={"uce": str(edit_path)},
        classifier="world",
        sampling_steps=sampling_steps,
        guidance=guidance,
        limit=limit,
        output=str(output / "eval"),
    )
    results = evaluate(config, pipe=pipe, classifier=load_classifiers(), progress=progress)
    objects_scores = {name: results.metrics(name)["accuracy"]["families"]["object"] for name in results["variants"]}

    other = next(o for o in OBJECTS if o.name != concept)
    prompts = [f"a photo of a {concept}", f"a photo of a {target.synonyms[0]}", f"a photo of a {other.name}"]
    base, erased = before_after(pipe, edit, prompts, 0, sampling_steps, guidance)
    grid_path = output / "grid.png"
    with atomic_file(grid_path) as tmp:
        image_grid([("base", base), ("erased", erased)], prompts).save(tmp, format="PNG")
    return DemoResult(
        edit=edit_path,
        grid=grid_path,
        report=write_report(output / "eval"),
        accuracy={name: scores["acc"] for name, scores in objects_scores.items()},
        score={name: scores.get("H_o") for name, scores in objects_scores.items()},
    )
