"""What MACE costs, stage by stage: seconds and peak memory for 1, 10 and 100 concepts.

Two settings, CPU unless a GPU is given with ``--device cuda``:

* ``world``: the full method (all three stages) on the benchmark world model ``erasekit:world``, erasing the first
  n erasable characters with the ``world`` preset (8 images, 50 LoRA steps per concept).
* ``sd15``: stages 1 and 3 on the full SD1.5-size architecture with random weights (the recipe of
  ``closed_form.py``): stage 1 on the concepts' template pairs; stage 3 on their template prompts with random rank-1
  LoRAs standing in for trained ones (stage 2 on SD1.5 needs a GPU and real weights to mean anything). The point is
  the closed forms' cost and that stage 3's memory stays flat in the number of concepts.
* ``sdxl``: stage 3 on SDXL base's 140 K/V matrices (shapes from its UNet built on the meta device: ``sdxl.py``'s
  config), with random 2048-d rows standing in for each concept's encoded template prompts (``templates`` x 77 rows;
  the text encoders add time to this stage, not memory) and random rank-1 LoRAs; the shared solve runs once, at the
  largest size (its inputs have the same shapes at every size). Run it under the full-SDXL lock (~9 GB):
  ``flock /tmp/erasekit-full-sdxl.lock python benchmarks/mace.py --settings sdxl``.

Peak memory is the process's peak resident set during a stage minus its resident set before it (Linux: the
high-water mark is reset through ``/proc/self/clear_refs``), taken as the maximum over the stage's calls (stage 2:
per concept). On CUDA the peak of ``torch.cuda.max_memory_allocated`` is reported instead.

    python benchmarks/mace.py                                  # both settings, sizes 1 10 100
    python benchmarks/mace.py --settings sd15 --templates 5    # SD1.5 closed forms with 5 templates per concept
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_form import build_sd15_pipeline, machine, read_names, resident_kib
from sdxl import KV_SHAPES, SDXL_UNET

import erasekit.methods.mace.method as mace
from erasekit.concepts import Concept, ConceptSet
from erasekit.linalg import gram
from erasekit.methods.mace.fusion import FusionAccumulator
from erasekit.methods.mace.lora import ConceptLoRA
from erasekit.methods.mace.prompts import prompt_pairs
from erasekit.methods.mace.refine import cfr_statistics, prior_gram, refine_transform
from erasekit.models import ModelAdapter, load_pipeline
from erasekit.models.loading import quiet_libraries
from erasekit.world import ERASABLE_CHARACTERS


class StageMeter:
    """Seconds (summed) and peak memory above the start (max) of every call attributed to a stage."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mib: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            before = resident_kib("VmRSS") * 1024
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device == "cuda":
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
            else:
                peak = resident_kib("VmHWM") * 1024 - before
            self.seconds[name] += time.perf_counter() - start
            self.peak_mib[name] = max(self.peak_mib[name], peak / 2**20)

    def wrap(self, owner: Any, attribute: str, stage: str) -> Callable[[], None]:
        """Attribute every call of ``owner.attribute`` to ``stage``; returns the function that undoes it."""
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.stage(stage):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)
        return lambda: setattr(owner, attribute, original)


def world_run(n: int, device: str) -> dict[str, Any]:
    """The full method on the world model, stage by stage."""
    pipe = load_pipeline("erasekit:world", device=device)
    model = ModelAdapter(pipe)
    concepts = ConceptSet(tuple(Concept(name, kind="celebrity") for name in ERASABLE_CHARACTERS[:n]))
    meter = StageMeter(device)
    undo = [
        meter.wrap(mace, "prior_gram", "statistics"),
        meter.wrap(mace, "cfr_statistics", "stage 1"),
        meter.wrap(mace, "refine_transform", "stage 1"),
        meter.wrap(mace, "model_images", "stage 2 data"),
        meter.wrap(mace.AttentionMasks, "__call__", "stage 2 data"),
        meter.wrap(mace, "train_concept_lora", "stage 2 LoRA"),
        meter.wrap(FusionAccumulator, "add", "stage 3"),
        meter.wrap(FusionAccumulator, "solve", "stage 3"),
    ]
    start = time.perf_counter()
    try:
        mace.MACE(preset="world", progress=False).fit(model, concepts)
    finally:
        for u in undo:
            u()
    return {"total_s": time.perf_counter() - start, "seconds": dict(meter.seconds), "peak_mib": dict(meter.peak_mib)}


def sd15_run(pipe, n: int, templates: int, prior_captions: int, device: str) -> dict[str, Any]:
    """Stages 1 and 3 (random rank-1 LoRAs) on the SD1.5-size model."""
    model = ModelAdapter(pipe)
    names = read_names("mace_celebrities.csv", n)
    concepts = [Concept(name, kind="celebrity") for name in names]
    meter = StageMeter(device)
    with meter.stage("statistics"):
        preserve = 1e-4 * prior_gram(model, prior_captions)
    with meter.stage("stage 1"):
        S_cc, S_gc = cfr_statistics(model, concepts, templates)
        T = refine_transform(S_cc, S_gc, preserve, 0.0)
        originals = {k: w.detach() for k, w in model.kv_weights().items()}
        refined = {k: (w.double() @ T.to(w.device)).float() for k, w in originals.items()}
    g = torch.Generator().manual_seed(0)
    with meter.stage("stage 3"):
        acc = FusionAccumulator({k: tuple(w.shape) for k, w in originals.items()})
        for concept in concepts:
            old, _ = prompt_pairs(concept, templates)
            factors = {k: (1e-3 * torch.randn(w.shape[0], 1, generator=g), torch.randn(1, w.shape[1], generator=g))
                       for k, w in originals.items()}  # fmt: skip
            acc.add(model.encode(old), ConceptLoRA(concept.text, factors))
        acc.solve(refined, originals, preserve, 0.0)
    return {"seconds": dict(meter.seconds), "peak_mib": dict(meter.peak_mib), "fusion_state_mib": acc.nbytes() / 2**20}


def sdxl_kv_shapes() -> dict[str, tuple[int, int]]:
    """SDXL base's K/V weight shapes by state-dict name, from its UNet built on the meta device (no memory)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    attn2 = [(name, module) for name, module in unet.named_modules() if name.endswith("attn2")]
    shapes = {f"{name}.{proj}.weight": tuple(getattr(module, proj).weight.shape)
              for name, module in attn2 for proj in ("to_k", "to_v")}  # fmt: skip
    if Counter(shapes.values()) != KV_SHAPES:
        raise SystemExit(f"not SDXL base's K/V layout: {dict(Counter(shapes.values()))}")
    return shapes


def sdxl_fusion_run(shapes: dict[str, tuple[int, int]], n: int, templates: int, solve: bool) -> dict[str, Any]:
    """Stage 3 on SDXL's K/V shapes: n concepts of random rows and rank-1 LoRAs, then (if ``solve``) the solve."""
    g = torch.Generator().manual_seed(0)
    d = next(iter(shapes.values()))[1]
    meter = StageMeter("cpu")
    with meter.stage("stage 3 statistics"):
        acc = FusionAccumulator(shapes)
        for _ in range(n):
            factors = {k: (1e-3 * torch.randn(out, 1, generator=g), torch.randn(1, d, generator=g))
                       for k, (out, _) in shapes.items()}  # fmt: skip
            acc.add(torch.randn(templates * 77, d, generator=g), ConceptLoRA("c", factors))
    if solve:
        weights = {k: 0.02 * torch.randn(shape, generator=g) for k, shape in shapes.items()}
        preserve = 1e-4 * gram(torch.randn(4 * d, d, generator=g))
        with meter.stage("stage 3 solve"):
            acc.solve(weights, weights, preserve, 0.0)
    return {"seconds": dict(meter.seconds), "peak_mib": dict(meter.peak_mib), "fusion_state_mib": acc.nbytes() / 2**20}


def print_table(console: Console, title: str, rows: list[dict[str, Any]]) -> None:
    stages = sorted({s for r in rows for s in r["seconds"]})
    table = Table(title=title)
    table.add_column("n", justify="right")
    for s in stages:
        table.add_column(f"{s} s", justify="right")
        table.add_column(f"{s} MiB", justify="right")
    for r in rows:
        cells = [f"{r['seconds'].get(s, 0):.1f}" for s in stages]
        mib = [f"{r['peak_mib'].get(s, 0):.0f}" for s in stages]
        table.add_row(str(r["concepts"]), *[x for pair in zip(cells, mib, strict=True) for x in pair])
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["world", "sd15"], choices=["world", "sd15", "sdxl"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--templates", type=int, default=30, help="template prompts per concept (sd15, sdxl)")
    parser.add_argument("--prior-captions", type=int, default=200, help="COCO captions in the prior (sd15)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mace.json"))
    args = parser.parse_args(argv)
    quiet_libraries()
    console = Console()
    report: dict[str, Any] = {"benchmark": "mace", "machine": machine(), "settings": vars(args) | {"out": None}}
    if "world" in args.settings:
        rows = []
        for n in args.sizes:
            rows.append({"concepts": n, **world_run(n, args.device)})
            console.print(f"world n={n}: {rows[-1]['total_s']:.1f} s")
        print_table(console, f"MACE on the world model ({args.device})", rows)
        report["world"] = rows
    if "sd15" in args.settings:
        pipe = build_sd15_pipeline().to(args.device)
        rows = []
        for n in args.sizes:
            rows.append({"concepts": n, **sd15_run(pipe, n, args.templates, args.prior_captions, args.device)})
            console.print(f"sd15 n={n}: {rows[-1]['seconds']}")
        print_table(console, f"MACE stages 1 and 3 on SD1.5-size random weights ({args.device})", rows)
        report["sd15"] = rows
    if "sdxl" in args.settings:
        shapes = sdxl_kv_shapes()
        rows = []
        for n in args.sizes:
            rows.append({"concepts": n, **sdxl_fusion_run(shapes, n, args.templates, solve=n == max(args.sizes))})
            console.print(f"sdxl n={n}: {rows[-1]['seconds']}, {rows[-1]['peak_mib']}")
        print_table(console, "MACE stage 3 on SDXL base's 140 K/V matrices (random rows and LoRAs, CPU)", rows)
        report["sdxl"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
