"""Images per second of evaluation: generation (fresh and resumed from the cache) and each metric, on the CPU.

Runs on the benchmark world (its pipeline, its ``objects`` prompts and its classifiers) when it is installed with a
trained pipeline, otherwise on the tiny random pipeline (``erasekit:tiny``) with synthetic object prompts and the
pixel stand-in classifier. The unedited model and a UCE edit of one concept are both generated, so paired metrics
(LPIPS, FID/KID against the base) have their reference. CLIP and LPIPS run on random-weight stand-ins of the real
architectures' code paths (``erasekit.eval.testing``): their speed here says nothing about ViT-B/32 or AlexNet.
NudeNet is the real 3.4.2 detector. The ratio it is about: each metric's cost per image relative to generating it.

    python benchmarks/eval_throughput.py             # 64 prompts
    python benchmarks/eval_throughput.py --rows 16   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import erasekit
from erasekit import erase
from erasekit.eval.metrics import METRICS, Variant
from erasekit.eval.prompts import PromptRow, assign_roles, load_prompts
from erasekit.eval.sampling import (
    ImageCache,
    edit_fingerprint,
    generate,
    image_key,
    image_spec,
    native_size,
    pipeline_fingerprint,
    sample_batch,
)
from erasekit.eval.testing import PixelClassifier, lpips_weight_files, tiny_clip
from erasekit.models import load_pipeline
from erasekit.models.loading import quiet_libraries

TINY_OBJECTS = ("dog", "cat", "car", "tree")


def world_setup(
    n_rows: int, pipeline: Path | None = None, classifiers: Path | None = None
) -> tuple[Any, list[PromptRow], Any, dict[str, Any]] | None:
    """(pipe, rows, classifier, sampling) of the benchmark world (the shipped one unless paths are given), or None
    where it is not available."""
    try:
        from erasekit import world

        pipe = load_pipeline(pipeline or world.pipeline_path())
        classifier = world.load_classifiers(classifiers)
    except Exception:  # not installed, not trained yet: fall back to the tiny model
        return None
    rows = load_prompts("world:objects")[::4][:n_rows]
    return (
        pipe,
        rows,
        classifier,
        {"sampling_steps": int(world.SAMPLING["steps"]), "guidance": float(world.SAMPLING["guidance"])},
    )


def tiny_setup(n_rows: int, folder: Path) -> tuple[Any, list[PromptRow], Any, dict[str, Any]]:
    from erasekit.models.tiny import tiny_pipeline

    pipe = load_pipeline(tiny_pipeline(folder / "tiny"))
    rows = [
        PromptRow(f"a photo of a {c}", seed=i, concept=c, role="direct", family="object", label=c)
        for i in range(n_rows)
        for c in [TINY_OBJECTS[i % len(TINY_OBJECTS)]]
    ]
    return pipe, rows, PixelClassifier(TINY_OBJECTS), {"sampling_steps": 10, "guidance": 7.5}


def timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="prompts (images per model variant)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pipeline", type=Path, help="a world pipeline folder (default: the shipped one)")
    parser.add_argument("--classifiers", type=Path, help="world classifier weights (default: the shipped ones)")
    parser.add_argument("--threads", type=int, help="torch threads (on a shared machine 1 can beat 2 several times)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_throughput.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="erasekit-eval-bench-"))

    setup = world_setup(args.rows, args.pipeline, args.classifiers)
    model = "world" if setup else "tiny (random weights)"
    pipe, rows, classifier, sampling = setup or tiny_setup(args.rows, tmp)
    edit = erase(pipe, [rows[0].concept], method="uce")
    size = native_size(pipe)
    specs = [image_spec(r, sampling["sampling_steps"], sampling["guidance"], size) for r in rows]
    cache = ImageCache(tmp / "cache")
    model_fp = pipeline_fingerprint(pipe)
    results: list[dict[str, Any]] = []
    sample_batch(pipe, specs[:1])  # warm-up: first-call overheads are not generation speed

    keys = {}
    for name, e in (("base", None), ("uce", edit)):
        keys[name] = [image_key(s, model_fp, edit_fingerprint(e)) for s in specs]
        if e is not None:
            e.apply(pipe)
        n, seconds = timed(lambda k=keys[name]: generate(pipe, specs, k, cache, args.batch_size, progress=False))
        _, resume_s = timed(lambda k=keys[name]: generate(pipe, specs, k, cache, args.batch_size, progress=False))
        if e is not None:
            e.remove(pipe)
        results.append({"stage": f"generate ({name})", "images": n, "seconds": seconds})
        results.append({"stage": f"resume from cache ({name})", "images": len(specs), "seconds": resume_s})

    roles = assign_roles(rows, [rows[0].concept])
    base = Variant("base", [rows[0].concept], roles, keys["base"], cache, classifier=classifier)
    clip = str(tiny_clip(tmp / "clip"))
    backbone, linear = lpips_weight_files(tmp / "lpips")
    options = {
        "accuracy": {},
        "nudenet": {"families": sorted({r.family for r in rows})},
        "clip_score": {"model": clip},
        "fid": {"features": "world", "roles": ["erase", "retain"]},
        "kid": {"features": "world", "roles": ["erase", "retain"], "num_subsets": 10},
        "lpips": {"backbone": str(backbone), "linear": str(linear)},
    }
    for name, opts in options.items():
        variant = Variant("uce", [rows[0].concept], roles, keys["uce"], cache, base=base, classifier=classifier)
        metric = METRICS.get(name)(opts)
        _, seconds = timed(lambda m=metric, v=variant: m.compute(v))
        paired = name in ("fid", "kid", "lpips")
        results.append({"stage": f"metric {name}", "images": len(rows) * (2 if paired else 1), "seconds": seconds})

    gen_rate = results[0]["images"] / results[0]["seconds"]
    table = Table(title=f"Evaluation throughput, {model} model, {len(rows)} prompts, {size}px, CPU fp32")
    for column in ("stage", "images", "seconds", "images/s", "cost vs generating"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in results:
        r["images_per_s"] = r["images"] / r["seconds"] if r["seconds"] else float("inf")
        r["cost_vs_generation"] = gen_rate / r["images_per_s"]
        table.add_row(
            r["stage"], str(r["images"]), f"{r['seconds']:.2f}", f"{r['images_per_s']:.1f}",
            f"{r['cost_vs_generation']:.3f}",
        )  # fmt: skip
    console.print(table)
    report = {
        "benchmark": "eval_throughput",
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "erasekit": erasekit.__version__,
        },
        "model": model,
        "pipeline": str(args.pipeline) if args.pipeline else None,
        "settings": {"rows": len(rows), "size": size, "batch_size": args.batch_size, **sampling},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
