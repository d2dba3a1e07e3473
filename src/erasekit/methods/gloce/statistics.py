"""What GLoCE records from the frozen model: the conditional half of the cross-attention outputs of partial
generations, inside a window of the trajectory (``progress = 1 - t / T``: any sampler); docs/methods/gloce.md,
"How a fit runs"."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch

from ...models.adapter import ModelAdapter
from .config import GLoCEConfig
from .core import POOL_SCALES, Moments, pooled_tokens

Window = tuple[float, float, int]  # (collect_from, collect_until, seeds): what a prompt's recording depends on
OnTokens = Callable[[int, list[str], torch.Tensor], None]  # (layer index, rows[i] = prompt of image i, x [R, T, d])
MOMENT_CACHE = 16
"""Prompts whose token moments are kept between concepts (the gate centre, shared mapping prompts)."""
MOMENT_CACHE_BYTES = 3_300_000_000
"""...and the memory they may hold. One prompt's moments are a d x d float64 matrix per cross-attention layer: ~99 MB
at SD1.5 size (16 layers: the count binds), ~820 MB at SDXL size (70 layers, 60 of them 1280-d: 4 prompts fit). An
evicted prompt is generated again when a later concept needs it: time, not memory (docs/methods/gloce.md, "SDXL and
SD2.x")."""


class _Recorder:
    """Hooks that hand the conditional half of every cross-attention output inside a window to ``on_tokens``."""

    def __init__(self, model: ModelAdapter, start: float, end: float, on_tokens: OnTokens) -> None:
        self.rows: list[str] = []
        self.recording = False
        T = model.pipe.scheduler.config.num_train_timesteps
        self.progress = lambda t: 1.0 - float(torch.as_tensor(t).flatten()[0]) / T
        self.end = end

        def pre_hook(_module, args, kwargs):
            p = self.progress(kwargs.get("timestep", args[1] if len(args) > 1 else 0))
            self.recording = start <= p < end

        def hook_for(index: int):
            def hook(_module, _inputs, output):
                if self.recording:
                    on_tokens(index, self.rows, output[output.shape[0] - len(self.rows) :].detach())

            return hook

        self.handles = [model.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)]
        self.handles += [layer.to_out.register_forward_hook(hook_for(i)) for i, layer in enumerate(model.layers)]

    def stop_after_window(self, pipe, i: int, _t, _kwargs) -> dict:
        """Pipeline callback: skip the rest of the trajectory once the window is behind (partial generation)."""
        timesteps = pipe.scheduler.timesteps
        if i + 1 < len(timesteps) and self.progress(timesteps[i + 1]) >= self.end:
            pipe._interrupt = True  # the pipeline's own early-exit flag (diffusers >= 0.25)
        return {}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_partial(model: ModelAdapter, run: GLoCEConfig, prompts: Sequence[str], window: Window, on_tokens: OnTokens,
                track: Callable[[list], Iterable] = iter) -> None:  # fmt: skip
    """Partial generations of every prompt with seeds ``0..seeds-1``, recording inside the window; ``track`` wraps
    the loop over batches (a progress bar's)."""
    jobs = [(p, s) for p in prompts for s in range(window[2])]
    chunks = [jobs[i : i + run.batch_size] for i in range(0, len(jobs), run.batch_size)]
    recorder = _Recorder(model, window[0], window[1], on_tokens)
    try:
        for chunk in track(chunks):
            recorder.rows = [p for p, _ in chunk]
            model.pipe(
                recorder.rows,
                num_inference_steps=run.sampling_steps,
                guidance_scale=run.guidance,
                height=run.size,
                width=run.size,
                generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                output_type="latent",
                callback_on_step_end=recorder.stop_after_window,
            )
    finally:
        recorder.close()


def by_prompt(rows: list[str]) -> dict[str, list[int]]:
    """The batch rows of each prompt."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(rows):
        groups.setdefault(p, []).append(i)
    return groups


class TokenMoments:
    """Per-layer token moments of prompts, each (prompt, window) generated once; the most recently used are kept, at
    most ``MOMENT_CACHE`` prompts and ``MOMENT_CACHE_BYTES``."""

    def __init__(self, model: ModelAdapter, run: GLoCEConfig) -> None:
        self.model, self.run = model, run
        self.cache: OrderedDict[tuple[str, Window], list[Moments]] = OrderedDict()

    def __call__(self, prompts: list[str], window: Window) -> list[Moments]:
        """Token moments per layer, summed over ``prompts``."""
        missing = [p for p in dict.fromkeys(prompts) if (p, window) not in self.cache]
        fresh: dict[str, list[Moments]] = {}
        if missing:
            fresh = {p: [Moments(layer.to_out.out_features) for layer in self.model.layers] for p in missing}
            scales = POOL_SCALES if self.run.multiscale else (1,)

            def on_tokens(index: int, rows: list[str], x: torch.Tensor) -> None:
                for p, idx in by_prompt(rows).items():
                    fresh[p][index].add(pooled_tokens(x[idx], scales))

            run_partial(self.model, self.run, missing, window, on_tokens)
        per_prompt = [fresh[p] if p in fresh else self.cache[(p, window)] for p in prompts]
        self.cache.update(((p, window), fresh[p]) for p in missing)
        for p in prompts:
            self.cache.move_to_end((p, window))
        while self.cache and (len(self.cache) > MOMENT_CACHE or self.nbytes() > MOMENT_CACHE_BYTES):
            self.cache.popitem(last=False)
        merged = per_prompt[0]
        for other in per_prompt[1:]:
            merged = [a.merged(b) for a, b in zip(merged, other, strict=True)]
        return merged

    def nbytes(self) -> int:
        """Memory held by the cached moments."""
        return sum(m.outer.nbytes + m.total.nbytes for moments in self.cache.values() for m in moments)
