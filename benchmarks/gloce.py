"""What GLoCE costs on an SD1.5-size or SDXL model: inference overhead of 1, 10 and 100 concept modules, fitting time.

Inference: the full SD1.x UNet (860 M parameters, random weights; ``closed_form.build_sd15_pipeline``) runs one
denoising step of a 512 px image with classifier-free guidance (batch 2, 64x64 latents, the text encoder's rows of
"" and a prompt, fp32, CPU), with and without K stacked GLoCE modules (rank 2, gate rank 1, SD1.x's 16
cross-attention outputs) attached through the real ``gloce`` attach function. Two gate states bound the cost:
``shut`` (every gate below threshold: a prompt without the concept, the common case; only the scores are computed)
and ``open`` (every token gated: the worst case, the replacement is computed for all 2 x 5,440 tokens per step).
Random modules cost exactly what fitted ones do (same shapes, same code path). Overhead is reported two ways: the
time spent inside the hooks (summed with ``perf_counter``) over the fastest base step and over the rest of the same
edited step (robust on a busy machine, where whole steps vary by 2x: hooks and UNet saw the same load), and
end-to-end (fastest edited step over fastest base step, ``--repeat`` steps each; noisy on a shared machine). The
target is checked on the larger hook ratio.

``--model sdxl``: SDXL base's UNet at full size with random weights (2.57 B parameters, fp32, ~10 GB: run it under
the full-SDXL lock, ``flock /tmp/erasekit-full-sdxl.lock``) and 70 cross-attention outputs; the text encoders are
SDXL's widths (768 + 1280, pooled 1280) with one layer each, since only the UNet step is timed. The step takes the
pooled and size conditioning through the adapter (``ModelAdapter.denoise``), as the pipeline does.

Fitting (per concept, celebrity preset: 27 partial generations of 21 of 50 steps): the UNet evaluations a fit needs,
the measured cost of one UNet evaluation, of recording one image-step of statistics (multi-scale pooled moments at
every cross-attention output, float64) and of the closed form (three eigen-decompositions per layer, of up to 1280 x
1280) give an *estimate* for the model on this CPU; the measured fit time on the benchmark world comes from the
world runs (docs/methods/gloce.md).

    python benchmarks/gloce.py              # K = 1, 10, 100: 7 UNet steps (~1-2 min each on one busy CPU core)
    python benchmarks/gloce.py --latent 32  # 256 px: ~4x faster, a slightly pessimistic ratio
    flock /tmp/erasekit-full-sdxl.lock python benchmarks/gloce.py --model sdxl --sizes 100  # 512 px SDXL step
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from closed_form import build_sd15_pipeline, machine
from sdxl import SDXL_UNET

from erasekit.methods.gloce.core import Moments, pooled_tokens, top_eigenvectors
from erasekit.methods.gloce.modules import attach
from erasekit.models import ModelAdapter
from erasekit.models.build import assemble_sdxl_pipeline, clip_text_encoder
from erasekit.models.loading import quiet_libraries
from erasekit.models.tiny import tiny_vae

RANK, GATE_RANK = 2, 1
# celebrity preset (docs/methods/gloce.md, "How a fit runs"): mapping 3 prompts x 3 seeds, target 3, gate centre 3,
# target calibration 3, anchors 3 x 3 = 27 partial generations; recording 10 of 50 steps, stopping after the 21st.
GENERATIONS, STEPS_RUN, STEPS_RECORDED = 27, 21, 10


def random_modules(model: ModelAdapter, K: int, centre: float, seed: int = 0) -> tuple[dict, dict]:
    """Stacked tensors and spec of K random GLoCE modules per cross-attention output (gates at ``centre``)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in model.layers:
        d = layer.to_out.out_features
        orth = lambda r, d=d: torch.linalg.qr(torch.randn(K, d, r, generator=g))[0]  # noqa: E731
        fields = {
            "A": orth(RANK), "B": orth(RANK), "mu_t": torch.randn(K, d, generator=g),
            "mu_m": torch.randn(K, d, generator=g), "G": orth(GATE_RANK), "mu_n": torch.randn(K, d, generator=g),
            "center": torch.full((K,), centre), "slope": torch.full((K,), 1838.0),
        }  # fmt: skip
        tensors.update({f"{layer.name}/{k}": v for k, v in fields.items()})
    spec = {
        "layers": [layer.name for layer in model.layers], "concepts": [f"c{k}" for k in range(K)],
        "eta": [1.0] * K, "active_from": [0.0] * K, "num_train_timesteps": 1000, "min_gate": 1e-4, "eps": 1e-6,
    }  # fmt: skip
    return tensors, spec


class HookTimer:
    """Sums the wall time spent inside the GLoCE hooks (registered around them, so it sees exactly their work)."""

    def __init__(self, model: ModelAdapter) -> None:
        self.seconds = 0.0
        self.handles = []
        for layer in model.layers:
            self.handles.append(layer.to_out.register_forward_hook(self._start, prepend=True))
            self.handles.append(layer.to_out.register_forward_hook(self._stop))

    def _start(self, *_args) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, *_args) -> None:
        self.seconds += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def build_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL base's UNet at full size (random weights, fp32); one-layer text encoders of SDXL's widths; a tiny VAE."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_UNET).eval()
    text_encoder = clip_text_encoder(768, num_layers=1, num_heads=12, intermediate_size=3072)
    text_encoder_2 = clip_text_encoder(1280, num_layers=1, num_heads=20, intermediate_size=5120, projection_dim=1280)
    vae = tiny_vae()
    return assemble_sdxl_pipeline(vae, unet, text_encoder.eval(), text_encoder_2.eval())


@torch.no_grad()
def unet_step(model: ModelAdapter, inputs: dict[str, Any]) -> float:
    start = time.perf_counter()
    model.denoise(inputs["sample"], inputs["t"], inputs["cond"])
    return time.perf_counter() - start


def step_inputs(model: ModelAdapter, latent: int, t: int, seed: int = 1) -> dict[str, Any]:
    """A CFG batch (2 images) of latents, a timestep and the model's conditioning of "" and a prompt."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(2, 4, latent, latent, generator=g),
        "t": torch.tensor(t),
        "cond": model.conditioning(["", "a photo of a dog"]),
    }


def overhead(
    pipe, model: ModelAdapter, sizes: list[int], repeat: int, latent: int, console: Console
) -> tuple[list[dict[str, Any]], list[torch.Tensor], float]:
    """Base steps, then per (K, gate state) steps with the modules attached (and detached after each).

    Also returns the conditional half of every cross-attention output of the first base step (the statistics a fit
    records) and the fastest base step, for :func:`fitting_costs`.
    """
    inputs = step_inputs(model, latent, 500)
    captured: list[torch.Tensor] = []
    handles = [layer.to_out.register_forward_hook(lambda _m, _i, out: captured.append(out[1:])) for layer in
               model.layers]  # fmt: skip
    base_times = [unet_step(model, inputs)]
    for h in handles:
        h.remove()
    base_times += [unet_step(model, inputs) for _ in range(repeat - 1)]
    base = min(base_times)
    console.print(f"base step {base:.1f} s")
    rows = []
    for K in sizes:
        for state, centre in (("shut", 2.0), ("open", -1.0)):
            modules = random_modules(model, K, centre)
            edited, hooks = [], []
            for _ in range(repeat):
                detach = attach(pipe, *modules)
                timer = HookTimer(model)
                try:
                    edited.append(unet_step(model, inputs))
                    hooks.append(timer.seconds)
                finally:
                    timer.close()
                    detach()
            row = {"concepts": K, "gates": state, "base_s": base, "edited_s": min(edited), "hooks_s": min(hooks)}
            row["hooks_over_step"] = row["hooks_s"] / base
            # the same ratio within one step (hooks and the rest of the UNet saw the same machine load)
            row["hooks_over_own_step"] = max(h / (e - h) for h, e in zip(hooks, edited, strict=True))
            row["end_to_end_over_step"] = row["edited_s"] / base - 1
            rows.append(row)
            console.print(
                f"K={K:3d} gates {state}: step {row['edited_s']:.1f} s, in hooks {row['hooks_s']:.3f} s "
                f"({100 * row['hooks_over_step']:.2f} % of a step)"
            )
    return rows, captured, base


def fitting_costs(captured: list[torch.Tensor], unet_eval: float) -> dict[str, float]:
    """Measured parts of one fit: recording one image-step of statistics and the closed form; an estimate."""
    moments = [Moments(x.shape[-1]) for x in captured]
    start = time.perf_counter()
    for m, x in zip(moments, captured, strict=True):
        m.add(pooled_tokens(x))
    record = time.perf_counter() - start
    start = time.perf_counter()
    for m in moments:  # target U_t (r_u 16), mapping U_m (r_m 2), gate G (r_g 1): three eigh per layer
        cov = m.covariance() + 1e-3 * torch.eye(m.dim, dtype=torch.float64)
        for rank in (16, 2, 1):
            top_eigenvectors(cov, rank)
    closed = time.perf_counter() - start
    estimate = GENERATIONS * STEPS_RUN * unet_eval + GENERATIONS * STEPS_RECORDED * record + closed
    return {
        "unet_eval_batch2_s": unet_eval,
        "record_image_step_s": record,
        "closed_form_s": closed,
        "generations": GENERATIONS,
        "unet_evals_batch2": GENERATIONS * STEPS_RUN,
        "estimated_fit_s": estimate,
    }


def print_table(console: Console, rows: list[dict[str, Any]], latent: int, name: str) -> None:
    table = Table(title=f"GLoCE inference overhead on one {name} UNet step (batch 2, {latent}x{latent}, fp32, CPU)")
    for name in ("concepts", "gates", "base s", "edited s", "in hooks s", "hooks/base", "hooks/own", "end-to-end"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r["concepts"]),
            r["gates"],
            f"{r['base_s']:.2f}",
            f"{r['edited_s']:.2f}",
            f"{r['hooks_s']:.3f}",
            f"{100 * r['hooks_over_step']:.1f} %",
            f"{100 * r['hooks_over_own_step']:.1f} %",
            f"{100 * r['end_to_end_over_step']:+.1f} %",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="numbers of concept modules")
    parser.add_argument("--repeat", type=int, default=1, help="steps per case; the fastest is kept")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px images)")
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15", help="SD1.5-size or SDXL base UNet")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/gloce.json (sd15), gloce_sdxl.json")
    args = parser.parse_args(argv)
    out = args.out or Path(f"benchmarks/results/gloce{'_sdxl' if args.model == 'sdxl' else ''}.json")

    quiet_libraries()
    console = Console()
    pipe = build_sdxl_pipeline() if args.model == "sdxl" else build_sd15_pipeline()
    model = ModelAdapter(pipe)
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    name = {"sd15": "SD1.5-size", "sdxl": "SDXL base"}[args.model]
    console.print(f"{name} UNet: {n_params / 1e6:.0f} M parameters, {len(model.layers)} cross-attention outputs")
    rows, captured, base = overhead(pipe, model, args.sizes, args.repeat, args.latent, console)
    print_table(console, rows, args.latent, name)
    del pipe, model  # the fit estimate needs only the recorded outputs
    fit = fitting_costs(captured, base)
    console.print(
        f"fit, per concept (celebrity preset, estimate): {fit['unet_evals_batch2']} UNet evaluations x "
        f"{fit['unet_eval_batch2_s']:.1f} s + statistics {fit['record_image_step_s']:.2f} s per recorded image-step "
        f"+ closed form {fit['closed_form_s']:.2f} s = ~{fit['estimated_fit_s'] / 60:.0f} min on this CPU"
    )
    worst = max(max(r["hooks_over_step"], r["hooks_over_own_step"]) for r in rows if r["concepts"] == max(args.sizes))
    holds = worst <= 0.10
    console.print(f"target (<= 10 % at {max(args.sizes)} concepts, worst gate state): {'holds' if holds else 'FAILS'}")
    report = {
        "benchmark": "gloce",
        "machine": machine(),
        "model": {"name": args.model, "unet_params": n_params, "layers": len(captured), "dtype": "float32"},
        "settings": {
            "sizes": args.sizes,
            "repeat": args.repeat,
            "rank": RANK,
            "gate_rank": GATE_RANK,
            "batch": 2,
            "latent": args.latent,
        },
        "overhead": rows,
        "fitting": fit,
        "target_holds": holds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
