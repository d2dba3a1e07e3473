"""How long UCE, RECE and SPEED take on an SD1.5-size model, and how their time splits into text encoding and edit.

Builds the full SD1.x architecture with random weights (UNet 860 M parameters, cross-attention 768; a CLIP ViT-L
text encoder from its config; the real CLIP tokenizer; a tiny VAE, never used by a closed-form edit), then fits UCE
(default settings) and RECE (3 epochs) for 1, 10 and 100 celebrity names with 100 artist names preserved (MACE's
lists); ``--methods`` adds SPEED (its celebrity preset: one null space shared by all V weights) and ``speed+prior``
(SPEED with IPF and 10 DPA copies: a refined retain set and null space per V weight). Each fit is timed end to end;
every call to the text encoder (``ModelAdapter.encode``) is timed separately, so "edit" is everything else: token
bookkeeping, Grams, solves and the ``W @ T`` products for the edited matrices. The claim checked for UCE and RECE
(docs/methods/uce.md, "What it does"): the edit costs less than the text encoding it needs.

Peak memory is the process's peak resident set during the fit minus its resident set before it (Linux: the
high-water mark is reset through ``/proc/self/clear_refs``, after glibc has returned freed memory to the system), i.e.
what fitting adds on top of the loaded model.

    python benchmarks/closed_form.py            # sizes 1, 10, 100 with 100 preserved (several minutes)
    python benchmarks/closed_form.py --quick    # sizes 1, 10 (100 preserved: with a few preserved texts there
                                                # is little to encode, and the edit's fixed cost dominates)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from rich.console import Console
from rich.table import Table

import erasekit
from erasekit.concepts import Concept, ConceptSet
from erasekit.eval.prompts import shipped_names
from erasekit.methods import RECE, UCE
from erasekit.methods.speed import SPEED
from erasekit.models import ModelAdapter
from erasekit.models.build import assemble_pipeline, clip_text_encoder
from erasekit.models.loading import quiet_libraries
from erasekit.models.tiny import tiny_vae

RECE_EPOCHS = 3


def build_sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD1.x UNet and CLIP ViT-L text encoder at full size with random weights; a tiny VAE to save memory."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    text_encoder = clip_text_encoder(768, num_layers=12, num_heads=12, intermediate_size=3072)
    vae = tiny_vae()
    pipe = assemble_pipeline(vae, unet, text_encoder)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return pipe


def read_names(filename: str, n: int) -> list[str]:
    """The first ``n`` names of one of the MACE name lists shipped with the package."""
    names = shipped_names(filename)
    if len(names) < n:
        raise SystemExit(f"{filename} has {len(names)} names, {n} are needed")
    return names[:n]


def resident_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


class EncodeTimer:
    """Adds up the seconds spent in one adapter's ``encode`` and the prompts its text encoder actually ran on."""

    def __init__(self, model: ModelAdapter) -> None:
        self.seconds, self.texts = 0.0, 0
        encode = model.encode

        def timed(texts, *args, **kwargs):
            start = time.perf_counter()
            try:
                return encode(texts, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        def count(module, args, kwargs) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.texts += ids.shape[0]

        model.encode = timed
        self.hook = model.text_encoder.register_forward_pre_hook(count, with_kwargs=True)


def measure(fit: Callable[[ModelAdapter], Any], pipe: StableDiffusionPipeline) -> dict[str, float]:
    """Time ``fit`` on a fresh adapter of ``pipe`` and split the time into text encoding and edit."""
    model = ModelAdapter(pipe)
    timer = EncodeTimer(model)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # else memory freed by an earlier fit is reused unseen
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark to the current RSS
    before = resident_kib("VmRSS")
    start = time.perf_counter()
    fit(model)
    total = time.perf_counter() - start
    timer.hook.remove()
    peak = resident_kib("VmHWM") - before
    edit = total - timer.seconds
    return {
        "total_s": total,
        "encode_s": timer.seconds,
        "edit_s": edit,
        "edit_over_encode": edit / timer.seconds if timer.seconds else float("inf"),
        "encode_share": timer.seconds / total,
        "texts_encoded": timer.texts,
        "peak_mib": peak / 1024,
    }


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(resident_total_gib(), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "erasekit": erasekit.__version__,
    }


def resident_total_gib() -> float:
    meminfo = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) / 2**20


def print_table(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for name in ("method", "n", "texts", "total s", "encode s", "edit s", "edit/enc", "peak MiB"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for r in rows:
        ratio = f"{r['edit_over_encode']:.2f}"
        table.add_row(
            r["method"],
            str(r["concepts"]),
            str(r["texts_encoded"]),
            f"{r['total_s']:.1f}",
            f"{r['encode_s']:.1f}",
            f"{r['edit_s']:.2f}",
            ratio if r["edit_over_encode"] < 1 else f"[red]{ratio}[/red]",
            f"{r['peak_mib']:.0f}",
        )
    console.print(table)


def fit_grid(
    pipe: Any,
    celebrities: list[str],
    preserve: list[str],
    sizes: list[int],
    methods: list[str],
    repeat: int,
    console: Console,
) -> list[dict[str, Any]]:
    """Fit each method (UCE defaults, RECE with ``RECE_EPOCHS``, SPEED) for the first ``n`` celebrity names of each
    size, ``preserve`` kept, and measure each fit (the fastest of ``repeat``)."""
    fitters = {
        "uce": UCE(),
        "rece": RECE(epochs=RECE_EPOCHS),
        "speed": SPEED(),
        "speed+prior": SPEED(ipf=True, dpa_copies=10),
    }
    rows = []
    for n in sizes:
        concepts = ConceptSet(tuple(Concept(name, kind="celebrity") for name in celebrities[:n]), tuple(preserve))
        for name in methods:
            fit = lambda model, m=fitters[name], c=concepts: m.fit(model, c)  # noqa: E731
            runs = [measure(fit, pipe) for _ in range(repeat)]
            result = min(runs, key=lambda r: r["total_s"])
            rows.append({"method": name, "concepts": n, "preserve": len(preserve), **result})
            console.print(
                f"{name} n={n}: {result['total_s']:.1f} s (encode {result['encode_s']:.1f} s, "
                f"edit {result['edit_s']:.2f} s), peak +{result['peak_mib']:.0f} MiB"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1 and 10 only")
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of concepts (default 1 10 100)")
    parser.add_argument("--preserve", type=int, help="number of preserved artist names (default 100)")
    parser.add_argument("--repeat", type=int, default=1, help="fit each case this many times, keep the fastest")
    parser.add_argument(
        "--methods", nargs="+", default=["uce", "rece"], choices=["uce", "rece", "speed", "speed+prior"]
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/closed_form.json"))
    args = parser.parse_args(argv)
    sizes = args.sizes or ([1, 10] if args.quick else [1, 10, 100])
    n_preserve = args.preserve if args.preserve is not None else 100

    quiet_libraries()
    console = Console()
    celebrities = read_names("mace_celebrities.csv", max(sizes))
    preserve = read_names("mace_artists.csv", n_preserve)
    start = time.perf_counter()
    pipe = build_sd15_pipeline()
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    build_s = time.perf_counter() - start
    console.print(f"built SD1.5-size pipeline ({n_params / 1e6:.0f} M UNet parameters) in {build_s:.0f} s")
    ModelAdapter(pipe).encode(["warm-up"])  # first-call overheads (allocator, kernels) are not part of any fit

    rows = fit_grid(pipe, celebrities, preserve, sizes, args.methods, args.repeat, console)
    title = f"Closed-form edits on SD1.5-size random weights ({n_preserve} preserved, fp32, CPU)"
    print_table(console, rows, title)
    holds = all(r["edit_over_encode"] < 1 for r in rows if r["method"] in ("uce", "rece"))
    console.print(f"target (UCE/RECE edit < text encoding at every size): {'holds' if holds else 'FAILS'}")
    report = {
        "benchmark": "closed_form",
        "machine": machine(),
        "model": {"unet_params": n_params, "text_encoder": "CLIP ViT-L config, random weights", "dtype": "float32"},
        "settings": {"sizes": sizes, "preserve": n_preserve, "rece_epochs": RECE_EPOCHS, "kind": "celebrity"},
        "results": rows,
        "target_holds": holds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
