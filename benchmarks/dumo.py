"""What ESD and DuMo cost: training step time and memory, and DuMo's inference overhead over one UNet step.

Two models: the benchmark world (``erasekit:world``, trained) and the full SD1.x architecture with random weights
(``closed_form.build_sd15_pipeline``: UNet 860 M parameters, 64x64 latents = 512 px; fp32).

* ``unet ms``: one classifier-free-guidance UNet call (batch 2), median of ``--repeat`` calls, no gradients;
  ``+dumo ms``: the same call with a DuMo edit attached (the EPR runs on both halves, the hook adds its 13
  residuals); ``overhead`` = their ratio - 1. Our estimate was ~40% (one extra encoder pass; docs/methods/dumo.md).
* ``update s``: one optimisation step without its trajectory (DDIM depth 0): the frozen model's target
  predictions, the trained model's forward and backward, Adam; measured as a fit's seconds / steps with
  ``sampling_steps=1`` (so every step draws depth 0). A real step adds its partial trajectory: on average
  ``(sampling_steps - 1) / 2`` guided UNet calls, i.e. ``step s`` = update + that many ``unet ms`` (20 on the
  world, 50 on SD).
* ``peak MiB``: the most resident memory the fit added on top of the loaded pipeline (Linux high-water mark reset
  before each fit, as in closed_form.py). On a CUDA device, ``cuda peak MiB`` from the allocator instead.

ESD-u on SD1.5 trains 860 M parameters (Adam state, gradients and a frozen copy: ~14 GB on top of the model); it is
skipped on machines with less than 40 GiB of memory.

    python benchmarks/dumo.py                 # world and SD1.5-size (about 15-25 minutes on 2 busy CPU cores)
    python benchmarks/dumo.py --models world  # the world only (about a minute)

``--models sdxl`` measures instead what one ESD-x step costs on the full SDXL architecture (random weights, the
pipeline in bf16 as users train it, only the trained tensors in float32): peak memory added and seconds per step, with
and without gradient checkpointing, at reduced latent sizes (``--sdxl-latents``; SDXL trains at 128 = 1024 px), plus
the parameter counts that fix the optimiser's memory for ESD-x, ESD-u and DuMo. It builds ~3.5 B parameters (7 GB in
bf16): run it under the machine's lock for full-size SDXL, ``flock /tmp/erasekit-full-sdxl.lock python ...``.

``--erasure`` runs the erasure comparison instead: the world experiments (``erasekit.world.experiments``: same
prompts and seeds for every method) ``explicit`` (direct, synonym and indirect prompts), ``style`` and ``object``
for UCE, ESD-x, ESD-u and DuMo with their world presets and the neighbours preserved, plus a Fréchet distance on
each task's retained prompts against the unedited model, with the world classifiers' pooled features (256-d) in
place of Inception's (the only image features available offline). About 40-60 minutes on 2 busy CPU cores; fits
and images are cached, so an interrupted run resumes.

    python benchmarks/dumo.py --erasure       # -> benchmarks/results/dumo_world.json + markdown tables
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from closed_form import build_sd15_pipeline, machine, resident_kib, resident_total_gib
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from rich.console import Console
from rich.table import Table
from sdxl import SDXL_UNET

from erasekit.concepts import ConceptSet
from erasekit.edits import Edit
from erasekit.methods.dumo.method import DuMo, base_names
from erasekit.methods.dumo.modules import KIND, DuMoNetwork
from erasekit.methods.esd import ESD, trainable_names
from erasekit.models import ModelAdapter, load_pipeline
from erasekit.models.adapter import Conditioning
from erasekit.models.build import assemble_sdxl_pipeline, clip_text_encoder
from erasekit.models.loading import quiet_libraries

TRAJECTORY_DEPTH = {"world": 20, "sd15": 50}  # DDIM steps of the trajectory in each model's preset
ERASURE_TASKS = ("explicit", "style", "object")
ERASURE_METHODS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "uce": ("uce", None),
    "esd-x": ("esd", {"preset": "world", "train_method": "x"}),
    "esd-u": ("esd", {"preset": "world", "train_method": "u"}),
    "dumo": ("dumo", {"preset": "world"}),
}


def build_sdxl_pipeline(latent: int, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    """SDXL base's architecture with random weights created directly in ``dtype``: the UNet, CLIP ViT-L and OpenCLIP
    bigG text encoders, SD's VAE. ``latent`` is the UNet's sample size, i.e. the training resolution / 8."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel(**{**SDXL_UNET, "sample_size": latent})
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)  # fmt: skip
        text_encoder = clip_text_encoder(768, num_layers=12, num_heads=12, intermediate_size=3072)
        text_encoder_2 = clip_text_encoder(1280, num_layers=32, num_heads=20, intermediate_size=5120,
                                           projection_dim=1280)  # fmt: skip
    finally:
        torch.set_default_dtype(default)
    return assemble_sdxl_pipeline(vae, unet, text_encoder, text_encoder_2)


def sdxl_training(latents: list[int], console: Console) -> dict[str, Any]:
    """One ESD-x step (trajectory depth 0) on full-size SDXL in bf16 per (latent size, checkpointing), and the
    trained parameter counts of ESD-x, ESD-u and DuMo (what Adam's float32 state costs: 16 bytes a parameter)."""
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only
        epr = DuMoNetwork(UNet2DConditionModel(**SDXL_UNET), "time_layer", 20, 1000)
    pipe = build_sdxl_pipeline(max(latents), torch.bfloat16)
    model = ModelAdapter(pipe)
    counts = {"unet": sum(p.numel() for p in pipe.unet.parameters()), "dumo": sum(p.numel() for p in epr.parameters())}
    for variant in ("x", "u"):
        counts[f"esd_{variant}"] = sum(
            p.numel() for p in model.unet_parameters(trainable_names(model, variant)).values()
        )
    console.print("SDXL trained parameters (M): " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in counts.items()))
    base_gib = resident_kib("VmRSS") / 2**20
    concepts = ConceptSet.build([{"text": "car", "kind": "object"}])
    runs = []
    for latent in latents:
        pipe.unet.register_to_config(sample_size=latent)
        for checkpointing in (False, True):
            method = ESD(train_method="x", steps=1, sampling_steps=1, progress=False,
                         gradient_checkpointing=checkpointing)  # fmt: skip
            cost = update_cost(method, model, concepts)
            runs.append({"latent": latent, "pixels": 8 * latent, "checkpointing": checkpointing, **cost})
            console.print(f"SDXL ESD-x {8 * latent} px, checkpointing {checkpointing}: {cost['update_s']:.0f} s, "
                          f"peak +{cost['peak_mib'] / 1024:.2f} GiB over {base_gib:.2f} GiB")  # fmt: skip
    return {"model": "sdxl", "dtype": "bfloat16", "parameters": counts, "pipeline_gib": base_gib, "esd_x": runs}


def untrained_dumo(model: ModelAdapter) -> Edit:
    """A DuMo edit with freshly initialised (zero-residual) modules: costs what a trained one does."""
    network = DuMoNetwork(model.unet, "time_layer", 20, 1000)
    tensors = {f"network.{k}": v for k, v in network.state_dict().items()}
    spec = {"tlmo": "time_layer", "tlmo_buckets": 20, "num_train_timesteps": 1000, "gating": False,
            "facilitate_factor": 1.0, "gate_tokens": []}  # fmt: skip
    return Edit.from_modules("dumo", {}, {}, model, KIND, tensors, spec, base_names(model))


def unet_call_ms(model: ModelAdapter, repeat: int) -> float:
    """Median time of one CFG-batch UNet call (batch 2, random text conditioning) through the adapter, whatever is
    attached to the UNet (SDXL's pooled and size conditioning included)."""
    unet = model.unet
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size, device=unet.device, dtype=unet.dtype)
    pooled = torch.randn(2, model.pooled_dim) if model.family == "sdxl" else None
    cond = Conditioning(torch.randn(2, 77, model.embedding_dim), pooled)
    times = []
    with torch.no_grad():
        for i in range(repeat + 1):
            _sync(unet.device)
            start = time.perf_counter()
            model.denoise(x, torch.tensor(500, device=unet.device), cond)
            _sync(unet.device)
            if i:  # the first call pays one-off allocations
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def sdxl_inference(latent: int, repeat: int, console: Console) -> dict[str, Any]:
    """DuMo's inference overhead on full-size SDXL in bf16: a CFG UNet call with and without an (untrained) DuMo."""
    torch.manual_seed(0)
    pipe = build_sdxl_pipeline(latent, torch.bfloat16)
    model = ModelAdapter(pipe)
    plain = unet_call_ms(model, repeat)
    dumo = untrained_dumo(model)
    dumo.apply(pipe)
    with_dumo = unet_call_ms(model, repeat)
    dumo.remove(pipe)
    console.print(f"SDXL {8 * latent} px: UNet call {plain:.0f} ms, with DuMo {with_dumo:.0f} ms "
                  f"(+{with_dumo / plain - 1:.0%})")  # fmt: skip
    return {"model": "sdxl", "dtype": "bfloat16", "pixels": 8 * latent, "unet_call_ms": plain,
            "unet_call_with_dumo_ms": with_dumo, "dumo_overhead": with_dumo / plain - 1}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def update_cost(method: Any, model: ModelAdapter, concepts: ConceptSet) -> dict[str, float]:
    """Seconds per optimisation step (trajectory depth 0) and the memory the fit adds."""
    device = model.unet.device
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = resident_kib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    edit = method.fit(model, concepts)
    out = {
        "update_s": edit.log["training_seconds"] / edit.info["training"]["steps"],
        "peak_mib": (resident_kib("VmHWM") - before) / 1024,
        "trained_params": sum(t.numel() for t in {**edit.weights, **edit.modules}.values()),
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    return out


def bench_model(name: str, pipe: Any, steps: int, repeat: int, console: Console, esd_u: bool) -> dict[str, Any]:
    model = ModelAdapter(pipe)
    concepts = ConceptSet.build([{"text": "car", "kind": "object"}], preserve=["tree"])
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    plain = unet_call_ms(model, repeat)
    dumo = untrained_dumo(model)
    dumo.apply(pipe)
    with_dumo = unet_call_ms(model, repeat)
    dumo.remove(pipe)
    epr_params = sum(t.numel() for t in dumo.modules.values())
    console.print(f"{name}: UNet call {plain:.1f} ms, with DuMo {with_dumo:.1f} ms (+{with_dumo / plain - 1:.0%})")
    common = {"steps": steps, "sampling_steps": 1, "progress": False}
    methods = {"ESD-x": ESD(train_method="x", **common), "DuMo": DuMo(**common)}
    if esd_u:
        methods["ESD-u"] = ESD(train_method="u", **common)
    depth = TRAJECTORY_DEPTH[name]
    training = {}
    for label, method in methods.items():
        cost = update_cost(method, model, concepts)
        cost["step_s"] = cost["update_s"] + (depth - 1) / 2 * plain / 1000
        training[label] = cost
        console.print(f"{name} {label}: update {cost['update_s']:.2f} s, peak +{cost['peak_mib']:.0f} MiB")
    return {
        "model": name,
        "unet_params": unet_params,
        "epr_params": epr_params,
        "unet_call_ms": plain,
        "unet_call_with_dumo_ms": with_dumo,
        "dumo_overhead": with_dumo / plain - 1,
        "trajectory_sampling_steps": depth,
        "training": training,
    }


def print_tables(console: Console, results: list[dict[str, Any]]) -> None:
    table = Table(title="DuMo inference overhead (one CFG UNet call, batch 2)")
    for col in ("model", "UNet M params", "EPR M params", "unet ms", "+dumo ms", "overhead"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(r["model"], f"{r['unet_params'] / 1e6:.1f}", f"{r['epr_params'] / 1e6:.1f}",
                      f"{r['unet_call_ms']:.1f}", f"{r['unet_call_with_dumo_ms']:.1f}",
                      f"{100 * r['dumo_overhead']:.0f}%")  # fmt: skip
    console.print(table)
    table = Table(title="Training cost per step")
    for col in ("model", "method", "trained M", "update s", "step s", "peak MiB"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in results:
        for label, t in r["training"].items():
            table.add_row(r["model"], label, f"{t['trained_params'] / 1e6:.1f}", f"{t['update_s']:.2f}",
                          f"{t['step_s']:.2f}", f"{t.get('cuda_peak_mib', t['peak_mib']):.0f}")  # fmt: skip
    console.print(table)


def retained_fid(task: str, folder: Path, output: Path) -> float:
    """Mean over a task's edits of the Fréchet distance between edited and unedited images of the retained rows."""
    from erasekit.eval.run import EvalConfig, evaluate
    from erasekit.world import load_classifiers
    from erasekit.world.prompts import SAMPLING

    edits = {p.stem: str(p) for p in sorted(folder.glob("edit-*.safetensors"))}
    config = EvalConfig(
        model="erasekit:world",
        prompts=[str(output / task / "prompts.csv")],
        edits=edits,
        metrics=["fid"],
        metric_options={"fid": {"features": "world", "roles": ["retain"]}},
        classifier="world",
        sampling_steps=int(SAMPLING["steps"]),
        guidance=float(SAMPLING["guidance"]),
        output=str(folder / "eval-fid"),
    )
    results = evaluate(config, classifier=load_classifiers(), progress=False)
    return statistics.mean(results.metrics(name)["fid"]["fid"] for name in edits)


def erasure(output: Path, out: Path, tasks: list[str], methods: list[str], console: Console) -> None:
    """The world comparison: every method on every task, accuracies per role, the task score and retained FID."""
    from erasekit.world.experiments import markdown_table, run_label, run_task

    torch.set_num_threads(1)
    pipe = load_pipeline("erasekit:world")
    report: dict[str, Any] = {"benchmark": "dumo_world", "machine": machine(), "tasks": {}}
    for task in tasks:
        summaries = []
        for name in methods:
            method, params = ERASURE_METHODS[name]
            label = name + run_label(method, params, "neighbours").removeprefix(f"{method}-neighbours")
            start = time.perf_counter()
            summary = run_task(task, method, params, "neighbours", output, label, pipe=pipe, progress=False)
            summary["retained_fid"] = retained_fid(task, output / task / label, output)
            summaries.append(summary)
            console.print(f"{task} {label}: {summary['edited']} FID {summary['retained_fid']:.3f} "
                          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
        table = markdown_table(summaries)
        fid = "\n".join(f"- {s['label']}: retained FID {s['retained_fid']:.3f}" for s in summaries)
        console.print(f"\n## {task}\n{table}\n{fid}\n")
        report["tasks"][task] = {"summaries": summaries, "table": table}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = ["world", "sd15", "sdxl", "sdxl-inference"]
    parser.add_argument("--models", nargs="+", default=["world", "sd15"], choices=models)
    parser.add_argument("--sdxl-latents", nargs="+", type=int, default=[32, 64], help="SDXL latent sizes (px / 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=5, help="UNet calls timed per configuration (median)")
    parser.add_argument("--sd-steps", type=int, default=2, help="optimisation steps timed per method on SD1.5")
    parser.add_argument("--out", type=Path, help="JSON report (default benchmarks/results/dumo[_world].json)")
    parser.add_argument("--erasure", action="store_true", help="run the world erasure comparison instead")
    parser.add_argument("--runs", type=Path, default=Path("runs/world-bench"), help="edits/evaluations (--erasure)")
    parser.add_argument("--methods", nargs="+", default=list(ERASURE_METHODS), choices=list(ERASURE_METHODS))
    parser.add_argument("--tasks", nargs="+", default=list(ERASURE_TASKS), choices=list(ERASURE_TASKS))
    args = parser.parse_args(argv)
    quiet_libraries()
    if args.erasure:
        erasure(args.runs, args.out or Path("benchmarks/results/dumo_world.json"), args.tasks, args.methods, Console())
        return
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    console = Console()
    results, sdxl, sdxl_inference_cost = [], None, None
    for name in args.models:
        if name == "sdxl":
            sdxl = sdxl_training(args.sdxl_latents, console)
            continue
        if name == "sdxl-inference":
            sdxl_inference_cost = sdxl_inference(min(args.sdxl_latents), max(2, args.repeat // 2), console)
            continue
        torch.manual_seed(0)
        pipe = load_pipeline("erasekit:world") if name == "world" else build_sd15_pipeline()
        pipe.to(args.device)
        steps = 10 if name == "world" else args.sd_steps
        big_enough = resident_total_gib() >= 40 or args.device == "cuda"
        repeat = args.repeat if name == "world" else max(2, args.repeat // 2)
        results.append(bench_model(name, pipe, steps, repeat, console, esd_u=name == "world" or big_enough))
        del pipe
    if results:
        print_tables(console, results)
    report = {"benchmark": "dumo", "machine": machine(), "device": args.device, "results": results}
    if sdxl is not None:
        report["sdxl_training"] = sdxl
    if sdxl_inference_cost is not None:
        report["sdxl_inference"] = sdxl_inference_cost
    if args.device == "cuda":
        report["machine"]["gpu"] = torch.cuda.get_device_name()
    names = {"sdxl": "dumo_sdxl", "sdxl-inference": "dumo_sdxl_inference"}
    out = args.out or Path(f"benchmarks/results/{names.get(args.models[0], 'dumo')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
