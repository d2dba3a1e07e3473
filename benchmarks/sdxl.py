"""What UCE and RECE cost on the full SDXL architecture, split into text encoding and the edit.

A closed-form edit reads the two text encoders and writes the cross-attention K/V weights; it never runs the UNet.
So the model built here is exactly what such an edit touches, at SDXL base's sizes with random weights (fp32, CPU):

- the SDXL base UNet (2.57 B parameters) built on the meta device, which holds shapes and no memory, with every
  ``attn2.to_k`` / ``attn2.to_v`` replaced by a real, randomly initialised ``Linear``: 70 attention blocks, 140 K/V
  matrices with 2048 input columns (20 with 640 outputs, 120 with 1280), 341 M parameters, all checked at build;
- CLIP ViT-L (768-d, 12 layers) and OpenCLIP bigG (1280-d, 32 layers, projected pooled output) text encoders built
  from their configs, with CLIP's real tokenizers (the second padding with "!", as SDXL's), whose penultimate layers
  give the 77 x 2048 rows the K/V read;
- a tiny VAE, never used (the pipeline needs one).

UCE (defaults) and RECE (3 epochs) are fitted for 1, 10 and 100 celebrity names with 100 artist names preserved, as
``closed_form.py`` does on SD1.5 (its timing and memory code is shared). 100 concepts encode 90 more prompts than 10
at ~3 s each on a busy 2-core machine; ``--project 100`` measures the smaller sizes and projects the largest from the
per-concept cost (encoding: seconds per prompt times the prompts 100 concepts need; edit and memory: extrapolated
linearly from the two largest measured sizes), marked ``projected`` in the JSON and ``*`` in the table.

Run it under the lock that keeps two full-SDXL builds from running at once on a shared machine:

    flock /tmp/erasekit-full-sdxl.lock python benchmarks/sdxl.py                 # 1, 10, 100 measured
    flock /tmp/erasekit-full-sdxl.lock python benchmarks/sdxl.py --project 100   # 1, 10 measured, 100 projected
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from closed_form import RECE_EPOCHS, fit_grid, machine, print_table, read_names, resident_kib
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from rich.console import Console
from torch import nn

from erasekit.models import ModelAdapter
from erasekit.models.build import assemble_sdxl_pipeline, clip_text_encoder
from erasekit.models.loading import quiet_libraries
from erasekit.models.tiny import tiny_vae

# SDXL base's UNet (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json); the remaining fields are diffusers'
# defaults, which that config keeps.
SDXL_UNET = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)  # fmt: skip
KV_SHAPES = {(640, 2048): 20, (1280, 2048): 120}
"""SDXL base's K/V matrices by (outputs, inputs): 70 ``attn2`` blocks, 140 matrices."""


def build_sdxl_kv_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The parts of SDXL base a closed-form edit touches, at full size with random weights (see the module doc)."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            module.to_k = nn.Linear(module.to_k.in_features, module.to_k.out_features, bias=False)
            module.to_v = nn.Linear(module.to_v.in_features, module.to_v.out_features, bias=False)
    text_encoder = clip_text_encoder(768, num_layers=12, num_heads=12, intermediate_size=3072)
    text_encoder_2 = clip_text_encoder(1280, num_layers=32, num_heads=20, intermediate_size=5120, projection_dim=1280)
    vae = tiny_vae()
    pipe = assemble_sdxl_pipeline(vae, unet, text_encoder.eval(), text_encoder_2.eval())
    check_layout(pipe)
    return pipe


def check_layout(pipe: StableDiffusionXLPipeline) -> None:
    """Fail unless the adapter sees SDXL base's 140 K/V matrices, all real, with 2048-d concatenated rows."""
    model = ModelAdapter(pipe)
    shapes = Counter(tuple(w.shape) for w in model.kv_weights().values())
    if model.family != "sdxl" or model.embedding_dim != 2048 or len(model.layers) != 70 or shapes != KV_SHAPES:
        raise SystemExit(f"not SDXL base's layout: {model.family}, {model.embedding_dim}-d, {dict(shapes)}")
    if any(w.is_meta for w in model.kv_weights().values()):
        raise SystemExit("a K/V weight was left on the meta device")


def parameter_counts(pipe: StableDiffusionXLPipeline) -> dict[str, int]:
    """Parameters of the UNet (meta included: the full architecture), of its real K/V and of each text encoder."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {
        "unet": count(pipe.unet),
        "unet_kv_materialised": sum(w.numel() for w in ModelAdapter(pipe).kv_weights().values()),
        "text_encoder": count(pipe.text_encoder),
        "text_encoder_2": count(pipe.text_encoder_2),
    }


def project(rows: list[dict[str, Any]], target: int) -> list[dict[str, Any]]:
    """Rows for ``target`` concepts from the two largest measured sizes of each method.

    Each extra celebrity name is one more prompt to encode (the guide "a person" is shared), so encoding scales with
    the seconds per prompt measured at the largest size; edit seconds and peak memory are extrapolated linearly
    (never downwards: a slope below zero is machine noise)."""
    projected = []
    for method in dict.fromkeys(r["method"] for r in rows):
        small, large = sorted((r for r in rows if r["method"] == method), key=lambda r: r["concepts"])[-2:]
        steps = (target - large["concepts"]) / (large["concepts"] - small["concepts"])
        edit, peak = (large[k] + steps * max(0.0, large[k] - small[k]) for k in ("edit_s", "peak_mib"))
        texts = large["texts_encoded"] + target - large["concepts"]
        encode = large["encode_s"] / large["texts_encoded"] * texts
        projected.append({
            "method": method, "concepts": target, "preserve": large["preserve"], "total_s": encode + edit,
            "encode_s": encode, "edit_s": edit, "edit_over_encode": edit / encode,
            "encode_share": encode / (encode + edit), "texts_encoded": texts, "peak_mib": peak, "projected": True,
        })  # fmt: skip
    return projected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of concepts to measure (default 1 10 100)")
    parser.add_argument("--project", type=int, help="project this size from the two largest measured sizes")
    parser.add_argument("--preserve", type=int, default=100, help="number of preserved artist names (default 100)")
    parser.add_argument("--repeat", type=int, default=1, help="fit each case this many times, keep the fastest")
    parser.add_argument("--methods", nargs="+", default=["uce", "rece"], choices=["uce", "rece"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sdxl.json"))
    args = parser.parse_args(argv)
    sizes = args.sizes or ([1, 10] if args.project else [1, 10, 100])
    if args.project and len(sizes) < 2:
        parser.error("--project needs at least two measured sizes")

    quiet_libraries()
    console = Console()
    celebrities = read_names("mace_celebrities.csv", max([*sizes, args.project or 0]))
    preserve = read_names("mace_artists.csv", args.preserve)
    start = time.perf_counter()
    pipe = build_sdxl_kv_pipeline()
    build_s = time.perf_counter() - start
    counts = parameter_counts(pipe)
    console.print(
        f"built SDXL's K/V and text encoders in {build_s:.0f} s: UNet {counts['unet'] / 1e9:.3f} B parameters "
        f"(K/V {counts['unet_kv_materialised'] / 1e6:.0f} M real, the rest on the meta device), text encoders "
        f"{counts['text_encoder'] / 1e6:.0f} M + {counts['text_encoder_2'] / 1e6:.0f} M; "
        f"resident {resident_kib('VmRSS') / 2**20:.1f} GiB"
    )
    ModelAdapter(pipe).encode(["warm-up"])  # first-call overheads (allocator, kernels) are not part of any fit

    rows = fit_grid(pipe, celebrities, preserve, sizes, args.methods, args.repeat, console)
    if args.project:
        rows += project(rows, args.project)
    title = f"Closed-form edits on SDXL-size random weights ({args.preserve} preserved, fp32, CPU)"
    print_table(console, [{**r, "method": r["method"] + ("*" if r.get("projected") else "")} for r in rows], title)
    if args.project:
        console.print("* projected from the measured sizes, not measured (see --project)")
    holds = all(r["edit_over_encode"] < 1 for r in rows)
    console.print(f"target (edit < text encoding at every size): {'holds' if holds else 'FAILS'}")
    report = {
        "benchmark": "sdxl_closed_form",
        "machine": machine(),
        "model": {
            "parameters": counts,
            "kv_matrices": sum(KV_SHAPES.values()),
            "built": "SDXL base UNet on the meta device with real attn2 to_k/to_v; CLIP ViT-L and OpenCLIP bigG "
            "text encoders from their configs, random weights; tiny unused VAE",
            "dtype": "float32",
            "build_s": build_s,
            "resident_after_build_gib": resident_kib("VmRSS") / 2**20,
        },
        "settings": {
            "sizes": sizes,
            "projected": args.project,
            "preserve": args.preserve,
            "rece_epochs": RECE_EPOCHS,
            "kind": "celebrity",
        },
        "results": rows,
        "target_holds": holds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
