"""The fine-tuning loop shared by ESD and DuMo: negative-guidance targets on partial DDIM trajectories.

ESD (Gandikota et al., ICCV 2023) trains a copy of the UNet so that, for the erased prompt ``c``, it predicts the
frozen model's noise pushed *away* from ``c``. We follow the authors' 2025 diffusers rewrite (``esd_sd.py``):

1. draw a DDIM index ``k`` uniformly in ``[0, sampling_steps)`` and run the *frozen* model ``k`` DDIM steps from pure
   noise with prompt ``c`` at guidance ``start_guidance``: a latent ``x_t`` the model would actually visit, at the
   noise level of DDIM timestep ``t = timesteps[k]`` (the 2023 code evaluated the model at a DDPM timestep drawn
   around ``k / sampling_steps * 1000``, which is *not* the noise level of ``x_t``; the rewrite fixed this, so do we);
2. target ``eps* = eps_0(x_t, c) - eta (eps_0(x_t, c) - eps_0(x_t, a))`` with ``eps_0`` the frozen model and ``a`` the
   anchor: the empty prompt (ESD), or the concept's guide when ``anchor="guide"``. ``eta`` is the rewrite's
   ``negative_guidance`` (default 2, which equals the 2023 form ``eps_0(a) - 1 * (eps_0(c) - eps_0(a))``);
3. loss ``||eps_phi(x_t, c) - eps*||^2`` for the trained model ``eps_phi``, plus, when ``preserve_weight > 0``,
   ``preserve_weight * ||eps_phi(x_t, p) - eps_0(x_t, p)||^2`` for a preserved prompt ``p`` on the same latent (not in
   ESD; step 2 of our DuMo recipe, docs/methods/dumo.md "The training recipe").

Methods plug in two callables, ``student(x, t, cond)`` (with gradients) and ``teacher(x, t, cond)`` (frozen), each
one UNet call through the model adapter (``cond`` is a :class:`Conditioning`: text rows plus, on SDXL, the pooled
embedding), and the named tensors to optimise. The targets are combinations of the frozen model's own predictions
whose coefficients sum to one, so they are right for epsilon and v-prediction models alike (docs/methods/esd.md,
"SDXL and SD2.x").

The loop adds what a long CPU/GPU fine-tune needs: every random draw of step ``i`` comes from a generator seeded by
``(seed, i)``, so an interrupted run resumed from its work directory (step, trainable tensors, optimiser state) ends
with bit-identical weights; progress; autocast (bf16 on CUDA, or the dtype of a half-precision model, whose frozen
weights stay in that dtype while only the trained tensors get float32 master copies); gradient checkpointing; and
data parallelism under ``torchrun`` / ``accelerate launch`` (every process draws the same step, trains on its shard of
the step's batch, and gradients are averaged: N processes train what one process does with N x ``batch_size``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils.checkpoint
from rich.progress import TextColumn
from torch import nn

from ..concepts import ConceptSet
from ..errors import ConfigError
from ..io import atomic_file
from ..launch import process_rank
from ..models.adapter import Conditioning, ModelAdapter
from ..progress import progress_bar
from ..validation import Seed, check_at_least
from .base import guide_for

NoiseModel = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
"""``model(x_t, t, cond) -> the denoiser's prediction`` (noise; velocity for v-prediction and flow models)."""
HALF = (torch.float16, torch.bfloat16)

CHECKPOINT = "checkpoint.pt"
# Fields that do not change what step i computes: a run may resume with other values.
RESUMABLE = ("steps", "checkpoint_every", "progress", "work_dir", "gradient_checkpointing")


@dataclass
class TrainingConfig:
    """Hyper-parameters of the negative-guidance fine-tune (shared by ESD and DuMo).

    Defaults are the SD1.x recipe of the ESD 2025 rewrite; the benchmark world registers CPU-sized settings as each
    method's preset ``world``.
    """

    steps: int = field(default=200, metadata={"help": "optimisation steps (ESD 2025 rewrite: 200)"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate, Adam (ESD 2025 rewrite: 5e-5)"})
    negative_guidance: float = field(
        default=2.0, metadata={"help": "eta of the target eps(c) - eta (eps(c) - eps(anchor)); 2 = ESD-2023's 1.0"}
    )
    start_guidance: float = field(
        default=3.0, metadata={"help": "classifier-free guidance of the partial trajectory that makes x_t"}
    )
    sampling_steps: int = field(
        default=50, metadata={"help": "DDIM steps of the trajectory; x_t stops at a uniform one"}
    )
    anchor: Literal["empty", "guide"] = field(
        default="empty",
        metadata={"help": "what the concept is pushed away from/toward: 'empty' prompt (ESD) or the concept's guide"},
    )
    batch_size: int = field(
        default=1, metadata={"help": "trajectories per step and process (ESD: 1); N processes train with N x this"}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "pixel size of the trajectories' images (None: the model's default size)"}
    )
    preserve_weight: float = field(
        default=0.0, metadata={"help": "weight of ||eps_phi(p) - eps_0(p)||^2 on preserved prompts p (0 = off)"}
    )
    erase_synonyms: bool = field(default=False, metadata={"help": "also train on each concept's synonyms"})
    seed: Seed = field(default=0, metadata={"help": "seed of every trajectory, timestep and prompt choice"})
    mixed_precision: Literal["auto", "no", "bf16"] = field(
        default="auto",
        metadata={"help": "bf16 autocast of a float32 model: 'auto' = on CUDA devices that support it, never on CPU "
                  "(a half-precision model always runs autocast in its own dtype)"},
    )  # fmt: skip
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute the UNet's (and DuMo's EPR's) block activations in the backward pass: less "
                  "memory (SDXL on one 24 GB GPU), about a third more time"},
    )  # fmt: skip
    work_dir: str | None = field(
        default=None,
        metadata={"help": "folder for resumable checkpoints; running again resumes (None = no checkpoints)"},
    )
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints in work_dir"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self, where: str) -> None:
        """Range checks shared by the subclasses (called from their ``__post_init__``)."""
        check_at_least(self, where, 0, ("steps", "lr", "sampling_steps", "batch_size", "checkpoint_every"), strict=True)
        if self.image_size is not None:
            check_at_least(self, where, 0, ("image_size",), strict=True)
        check_at_least(self, where, 0, ("negative_guidance", "start_guidance", "preserve_weight"))


def training_pairs(concepts: ConceptSet, cfg: TrainingConfig) -> list[tuple[str, str]]:
    """(erased prompt, anchor prompt) pairs: each concept (and its synonyms if asked) with '' or its guide."""
    pairs = []
    for concept in concepts:
        anchor = guide_for(concept) if cfg.anchor == "guide" else ""
        texts = [concept.text, *(concept.synonyms if cfg.erase_synonyms else ())]
        pairs += [(text, anchor) for text in texts]
    return pairs


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``: a pure function of (seed, step), so a resumed run draws what a straight one
    would (FNV-1a, not Python's per-process salted ``hash``)."""
    h = 1469598103934665603
    for ch in f"{seed}/negative-guidance/{step}".encode():
        h = ((h ^ ch) * 1099511628211) % 2**64
    return torch.Generator().manual_seed(h % 2**63)


def autocast(
    device: torch.device, mode: str, model_dtype: torch.dtype = torch.float32
) -> contextlib.AbstractContextManager:
    """Autocast in a half-precision model's own dtype (its frozen weights meet float32 trained copies: the forward
    must run in one dtype); for a float32 model, bf16 when asked ('bf16') or, for 'auto', on a CUDA device that
    supports it (CPU bf16 is slower)."""
    if model_dtype in HALF:
        return torch.autocast(device.type, dtype=model_dtype)
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NegativeGuidanceObjective:
    """The ESD loss of one step, given the frozen ``teacher`` and the trained ``student``.

    The conditioning of every erased, anchor and preserved prompt is computed once. The trajectory sampler is the
    adapter's (:meth:`ModelAdapter.trajectory_timesteps`): DDIM (eta 0, deterministic) from the pipeline's scheduler
    config for UNet families, whatever scheduler the pipeline samples with (so also its prediction type: a
    v-prediction model's outputs step as velocities); flow-matching Euler for FLUX and SD3. In a data-parallel run every
    process draws the whole step (prompt, depth, noise for ``world x batch_size`` trajectories) and keeps its rows.
    """

    def __init__(
        self,
        model: ModelAdapter,
        student: NoiseModel,
        teacher: NoiseModel,
        pairs: Sequence[tuple[str, str]],
        preserve: Sequence[str],
        cfg: TrainingConfig,
    ) -> None:
        if not pairs:
            raise ConfigError("nothing to erase: the concept set is empty")
        self.model, self.student, self.teacher, self.cfg = model, student, teacher, cfg
        self.pairs = list(pairs)
        self.preserve = list(preserve) if cfg.preserve_weight > 0 else []
        texts = list(dict.fromkeys([""] + [t for p in self.pairs for t in p] + self.preserve))
        denoiser = model.denoiser
        self.device, self.dtype = denoiser.device, denoiser.dtype
        self.rows = {text: i for i, text in enumerate(texts)}
        self.cond = model.conditioning(texts).to(self.device, self.dtype)
        self.rank, self.world = data_parallel(self.device)
        self.latent_shape = model.latent_shape(self.world * cfg.batch_size, cfg.image_size)
        self.scheduler = model.trajectory_timesteps(cfg.sampling_steps, self.latent_shape)
        self.flow = model.prediction_type == "flow"
        self.shard = slice(self.rank * cfg.batch_size, (self.rank + 1) * cfg.batch_size)

    def _batch(self, *texts: str) -> Conditioning:
        """The conditioning of ``texts`` in turn, each on ``batch_size`` rows (the pooled embedding travels along)."""
        return self.cond[[self.rows[text] for text in texts for _ in range(self.cfg.batch_size)]]

    def _scaled(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x if self.flow else self.scheduler.scale_model_input(x, t)

    @torch.no_grad()
    def trajectory(self, text: str, k: int, generator: torch.Generator) -> torch.Tensor:
        """``x_t`` after ``k`` guided steps of the frozen model from seeded noise (ESD's partial trajectory): DDIM for
        noise- and v-prediction models, Euler on the sigmas for flow-matching ones (FLUX, SD3)."""
        x = torch.randn(self.latent_shape, generator=generator)[self.shard].to(self.device, self.dtype)
        if not self.flow:
            x = x * self.scheduler.init_noise_sigma
        pair = self._batch("", text)
        for i, t in enumerate(self.scheduler.timesteps[:k]):
            out_u, out_c = self.teacher(self._scaled(torch.cat([x, x]), t), t, pair).chunk(2)
            out = out_u + self.cfg.start_guidance * (out_c - out_u)
            if self.flow:
                x = x + (self.scheduler.sigmas[i + 1] - self.scheduler.sigmas[i]).to(x.dtype) * out
            else:
                x = self.scheduler.step(out, t, x).prev_sample
        return x

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        """One step's loss (with gradients to the student's tensors); all randomness comes from ``generator``."""
        cfg = self.cfg
        text, anchor = self.pairs[int(torch.randint(len(self.pairs), (1,), generator=generator))]
        k = int(torch.randint(cfg.sampling_steps, (1,), generator=generator))
        preserved = (
            self.preserve[int(torch.randint(len(self.preserve), (1,), generator=generator))] if self.preserve else None
        )
        with autocast(self.device, cfg.mixed_precision, self.dtype):
            x_t = self.trajectory(text, k, generator)
            t = self.scheduler.timesteps[k]
            x_in = self._scaled(x_t, t)
            with torch.no_grad():
                eps_c = self.teacher(x_in, t, self._batch(text)).float()
                eps_a = self.teacher(x_in, t, self._batch(anchor)).float()
                target = eps_c - cfg.negative_guidance * (eps_c - eps_a)
            loss = F.mse_loss(self.student(x_in, t, self._batch(text)).float(), target)
            if preserved is not None:
                with torch.no_grad():
                    kept = self.teacher(x_in, t, self._batch(preserved)).float()
                pred = self.student(x_in, t, self._batch(preserved)).float()
                loss = loss + cfg.preserve_weight * F.mse_loss(pred, kept)
        return loss


def objective_value(
    base: ModelAdapter,
    edited: Any,
    pairs: Sequence[tuple[str, str]],
    cfg: TrainingConfig,
    draws: Sequence[int] = range(8),
    seed: int = 1234,
) -> float:
    """The negative-guidance loss of pipeline ``edited`` (its UNet call, with any edit applied) against the frozen
    ``base``, averaged over fixed draws: how far an edit has moved toward ESD's target, whatever method made it."""
    objective = NegativeGuidanceObjective(base, ModelAdapter(edited).denoise, base.denoise, pairs, [], cfg)
    with torch.no_grad():
        return sum(objective.loss(step_generator(seed, d)).item() for d in draws) / len(draws)


def run_training(
    objective: NegativeGuidanceObjective,
    trainable: dict[str, torch.Tensor],
    param_groups: list[dict[str, Any]],
    cfg: TrainingConfig,
    identity: dict[str, Any],
    description: str,
) -> dict[str, Any]:
    """Optimise ``trainable`` (named float32 tensors, grouped in ``param_groups`` for Adam) for ``cfg.steps`` steps.

    With ``cfg.work_dir`` the loop resumes from ``checkpoint.pt`` there (refusing one written for another
    ``identity``: method, config, concepts, base weights, number of processes) and checkpoints every
    ``checkpoint_every`` steps and at the end (only process 0 writes). A float16 model's gradients are loss-scaled
    (they underflow otherwise). Returns the training record stored in the edit's ``info``: steps, seconds, loss curve
    (mean per 10 steps, over all processes).
    """
    world = objective.world
    if world > 1:
        identity = {**identity, "processes": world}
    optimizer = torch.optim.Adam(param_groups)
    scaler = torch.amp.GradScaler(objective.device.type, enabled=objective.dtype == torch.float16)
    state: dict[str, Any] = {"step": 0, "losses": [], "seconds": 0.0}
    path = Path(cfg.work_dir) / CHECKPOINT if cfg.work_dir else None
    if path is not None and path.exists():
        state = _load_checkpoint(path, identity, cfg.steps)
        with torch.no_grad():
            for name, tensor in trainable.items():
                tensor.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    writes = path if objective.rank == 0 else None
    step, losses, window = state["step"], list(state["losses"]), []
    resumed_from, t0 = step, time.perf_counter()
    with progress_bar(cfg.progress and objective.rank == 0, TextColumn("loss {task.fields[loss]:.4f}")) as bar:
        task = bar.add_task(description, total=cfg.steps, completed=step, loss=float("nan"))
        while step < cfg.steps:
            loss = objective.loss(step_generator(cfg.seed, step))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if world > 1:
                loss = loss.detach()
                grads = [t.grad for t in trainable.values() if t.grad is not None]
                _average_over_processes([*grads, loss], world)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window.append(loss.item())
            if step % 10 == 0 or step == cfg.steps:
                losses.append([step, sum(window) / len(window)])
                window = []
            bar.update(task, advance=1, loss=losses[-1][1] if losses else window[-1])
            if writes is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                seconds = state["seconds"] + time.perf_counter() - t0
                _save_checkpoint(writes, step, trainable, optimizer, scaler, losses, seconds, identity)
    seconds = state["seconds"] + time.perf_counter() - t0
    return {"steps": step, "resumed_from": resumed_from, "seconds": round(seconds, 2), "losses": losses}


def data_parallel(device: torch.device) -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` unless a launcher (``torchrun``, ``accelerate launch``)
    set ``WORLD_SIZE`` > 1, in which case torch.distributed is initialised here unless the caller did (gloo on CPU,
    nccl on CUDA, from the launcher's ``RANK`` / ``MASTER_ADDR`` environment). Every process must hold the same
    model; on CUDA each on its own device, ``cuda:LOCAL_RANK``."""
    _, world = process_rank()
    if world <= 1:
        return 0, 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index != local:
        raise ConfigError(
            f"data-parallel process LOCAL_RANK={local} holds its model on {device}: load each process's model on "
            f"cuda:{local}"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _average_over_processes(values: Iterable[torch.Tensor], world: int) -> None:
    """Average tensors in place over all processes. Each process's loss is the mean over its equal share of the
    step's batch, so the averaged gradients are those of the whole batch's loss."""
    for value in values:
        dist.all_reduce(value)
        value /= world


def _save_checkpoint(path: Path, step: int, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, losses: list, seconds: float,
                     identity: dict[str, Any]) -> None:  # fmt: skip
    state = {
        "step": step,
        "trainable": {n: t.detach().cpu().clone() for n, t in trainable.items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "losses": losses,
        "seconds": seconds,
        "identity": json.dumps(identity, sort_keys=True),
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, identity: dict[str, Any], steps: int) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["identity"] != json.dumps(identity, sort_keys=True):
        raise ConfigError(
            f"work dir '{path.parent}' holds a run with other settings, concepts or base model; use a new work_dir "
            f"(only {', '.join(RESUMABLE)} may change when resuming)"
        )
    if state["step"] > steps:
        raise ConfigError(f"work dir '{path.parent}' is already at step {state['step']} > steps={steps}")
    return state


def run_identity(method: str, config: dict[str, Any], concepts: dict[str, Any], base: str) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint: everything but the ``RESUMABLE`` fields."""
    return {"method": method, "config": {k: v for k, v in config.items() if k not in RESUMABLE},
            "concepts": concepts, "base": base}  # fmt: skip


@contextlib.contextmanager
def float32_copies(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, nn.Parameter]]:
    """Inside the block ``module``'s parameters ``names`` are trainable float32 copies (yielded by name); on exit
    the original parameters, untouched, are back.

    Only the trained tensors need float32 master weights (bf16 rounds small Adam updates away, fp16 overflows):
    the frozen rest of a half-precision model stays in its dtype (half the memory of upcasting the network) and
    autocast runs the mixed forward in that dtype. The copies live in the module (not passed per call) so that
    gradient checkpointing recomputes with them.
    """
    owners = {name: module.get_submodule(name.rpartition(".")[0]) for name in names}
    originals = {name: getattr(owner, name.rpartition(".")[2]) for name, owner in owners.items()}
    copies = {name: nn.Parameter(p.detach().to(torch.float32, copy=True)) for name, p in originals.items()}
    try:
        for name, owner in owners.items():
            setattr(owner, name.rpartition(".")[2], copies[name])
        yield copies
    finally:
        for name, owner in owners.items():
            setattr(owner, name.rpartition(".")[2], originals[name])


def _checkpoint(module: nn.Module, *args: Any) -> Any:
    """diffusers' default checkpointing function (non-reentrant: frozen inputs and autocast are fine)."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


@contextlib.contextmanager
def gradient_checkpointing(enabled: bool, *modules: nn.Module) -> Iterator[None]:
    """With ``enabled``, every diffusers block inside ``modules`` (the UNet's, and the copies DuMo's EPR holds)
    recomputes its activations in the backward pass, as ``ModelMixin.enable_gradient_checkpointing`` sets it up; each
    block's previous setting is restored on exit."""
    blocks = (
        [m for module in modules for m in module.modules() if hasattr(m, "gradient_checkpointing")] if enabled else []
    )
    saved = [(m, m.gradient_checkpointing, getattr(m, "_gradient_checkpointing_func", None)) for m in blocks]
    for block in blocks:
        block.gradient_checkpointing, block._gradient_checkpointing_func = True, _checkpoint
    try:
        yield
    finally:
        for block, flag, func in saved:
            block.gradient_checkpointing, block._gradient_checkpointing_func = flag, func


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Turn off gradients of every parameter of ``module`` for the block, restoring each flag afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
