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

Methods plug in two callables, ``student(x, t, emb)`` (with gradients) and ``teacher(x, t, emb)`` (frozen), and the
named tensors to optimise. The loop adds what a long CPU/GPU fine-tune needs: every random draw of step ``i`` comes
from a generator seeded by ``(seed, i)``, so an interrupted run resumed from its work directory (step, trainable
tensors, optimiser state) ends with bit-identical weights; progress; bf16 autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from rich.progress import TextColumn

from ..concepts import ConceptSet
from ..errors import ConfigError
from ..io import atomic_file
from ..models.adapter import ModelAdapter
from ..progress import progress_bar
from ..validation import Seed, check_at_least
from .base import guide_for

NoiseModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(x_t, t, text_embeddings) -> predicted noise``."""

CHECKPOINT = "checkpoint.pt"
# Fields that do not change what step i computes: a run may resume with other values.
RESUMABLE = ("steps", "checkpoint_every", "progress", "work_dir")


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
    batch_size: int = field(default=1, metadata={"help": "trajectories per step (ESD: 1)"})
    preserve_weight: float = field(
        default=0.0, metadata={"help": "weight of ||eps_phi(p) - eps_0(p)||^2 on preserved prompts p (0 = off)"}
    )
    erase_synonyms: bool = field(default=False, metadata={"help": "also train on each concept's synonyms"})
    seed: Seed = field(default=0, metadata={"help": "seed of every trajectory, timestep and prompt choice"})
    mixed_precision: Literal["auto", "no", "bf16"] = field(
        default="auto", metadata={"help": "bf16 autocast: 'auto' = on CUDA devices that support it, never on CPU"}
    )
    work_dir: str | None = field(
        default=None,
        metadata={"help": "folder for resumable checkpoints; running again resumes (None = no checkpoints)"},
    )
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints in work_dir"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self, where: str) -> None:
        """Range checks shared by the subclasses (called from their ``__post_init__``)."""
        check_at_least(self, where, 0, ("steps", "lr", "sampling_steps", "batch_size", "checkpoint_every"), strict=True)
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


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked ('bf16') or, for 'auto', on a CUDA device that supports it (CPU bf16 is slower)."""
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NegativeGuidanceObjective:
    """The ESD loss of one step, given the frozen ``teacher`` and the trained ``student``.

    Text embeddings of every erased, anchor and preserved prompt are computed once. The trajectory sampler is DDIM
    (eta 0, deterministic) built from the pipeline's scheduler config, whatever scheduler the pipeline samples with.
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
        unet = model.unet
        self.device, self.dtype = unet.device, unet.dtype
        self.emb = dict(zip(texts, model.encode(texts).to(self.device, self.dtype), strict=True))
        self.scheduler = DDIMScheduler.from_config(model.pipe.scheduler.config)
        self.scheduler.set_timesteps(cfg.sampling_steps, device=self.device)
        size = unet.config.sample_size
        self.latent_shape = (cfg.batch_size, unet.config.in_channels, size, size)

    def _batch(self, text: str) -> torch.Tensor:
        return self.emb[text].expand(self.cfg.batch_size, -1, -1)

    @torch.no_grad()
    def trajectory(self, text: str, k: int, generator: torch.Generator) -> torch.Tensor:
        """``x_t`` after ``k`` guided DDIM steps of the frozen model from seeded noise (ESD's partial trajectory)."""
        x = torch.randn(self.latent_shape, generator=generator).to(self.device, self.dtype)
        x = x * self.scheduler.init_noise_sigma
        pair = torch.cat([self._batch(""), self._batch(text)])
        for t in self.scheduler.timesteps[:k]:
            x_in = self.scheduler.scale_model_input(torch.cat([x, x]), t)
            eps_u, eps_c = self.teacher(x_in, t, pair).chunk(2)
            eps = eps_u + self.cfg.start_guidance * (eps_c - eps_u)
            x = self.scheduler.step(eps, t, x).prev_sample
        return x

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        """One step's loss (with gradients to the student's tensors); all randomness comes from ``generator``."""
        cfg = self.cfg
        text, anchor = self.pairs[int(torch.randint(len(self.pairs), (1,), generator=generator))]
        k = int(torch.randint(cfg.sampling_steps, (1,), generator=generator))
        preserved = (
            self.preserve[int(torch.randint(len(self.preserve), (1,), generator=generator))] if self.preserve else None
        )
        with autocast(self.device, cfg.mixed_precision):
            x_t = self.trajectory(text, k, generator)
            t = self.scheduler.timesteps[k]
            x_in = self.scheduler.scale_model_input(x_t, t)
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
    objective = NegativeGuidanceObjective(
        base,
        lambda x, t, e: edited.unet(x, t, e).sample,
        lambda x, t, e: base.unet(x, t, e).sample,
        pairs,
        [],
        cfg,
    )
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
    """Optimise ``trainable`` (named tensors, grouped in ``param_groups`` for Adam) for ``cfg.steps`` steps.

    With ``cfg.work_dir`` the loop resumes from ``checkpoint.pt`` there (refusing one written for another
    ``identity``: method, config, concepts, base weights) and checkpoints every ``checkpoint_every`` steps and at the
    end. Returns the training record stored in the edit's ``info``: steps, seconds, loss curve (mean per 10 steps).
    """
    optimizer = torch.optim.Adam(param_groups)
    state: dict[str, Any] = {"step": 0, "losses": [], "seconds": 0.0}
    path = Path(cfg.work_dir) / CHECKPOINT if cfg.work_dir else None
    if path is not None and path.exists():
        state = _load_checkpoint(path, identity, cfg.steps)
        with torch.no_grad():
            for name, tensor in trainable.items():
                tensor.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
    step, losses, window = state["step"], list(state["losses"]), []
    resumed_from, t0 = step, time.perf_counter()
    with progress_bar(cfg.progress, TextColumn("loss {task.fields[loss]:.4f}")) as bar:
        task = bar.add_task(description, total=cfg.steps, completed=step, loss=float("nan"))
        while step < cfg.steps:
            loss = objective.loss(step_generator(cfg.seed, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            window.append(loss.item())
            if step % 10 == 0 or step == cfg.steps:
                losses.append([step, sum(window) / len(window)])
                window = []
            bar.update(task, advance=1, loss=losses[-1][1] if losses else window[-1])
            if path is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                seconds = state["seconds"] + time.perf_counter() - t0
                _save_checkpoint(path, step, trainable, optimizer, losses, seconds, identity)
    seconds = state["seconds"] + time.perf_counter() - t0
    return {"steps": step, "resumed_from": resumed_from, "seconds": round(seconds, 2), "losses": losses}


def _save_checkpoint(path: Path, step: int, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     losses: list, seconds: float, identity: dict[str, Any]) -> None:  # fmt: skip
    state = {
        "step": step,
        "trainable": {n: t.detach().cpu().clone() for n, t in trainable.items()},
        "optimizer": optimizer.state_dict(),
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
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Turn off gradients of every parameter of ``module`` for the block, restoring each flag afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
