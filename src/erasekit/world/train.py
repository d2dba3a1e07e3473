"""Train the world pipeline from scratch on CPU, in resumable stages.

Stages, each checkpointed in ``run_dir`` so that running the same command again resumes where it stopped:

1. data: ``n_images`` samples of the world's training mix (``generator.generate_mixed``), captions tokenized with
   CLIP's tokenizer to 77 positions. Regenerated from the seed when needed, never stored.
2. vae: an AutoencoderKL trained on the images (L1 + a small KL), then its latent scaling factor measured as in
   Stable Diffusion (1 / std of the latents).
3. latents: the posterior mean and std of every image, stored once (``latents.pt``) so the diffusion stage never
   runs the encoder.
4. diffusion: UNet and text encoder trained jointly from scratch with the epsilon objective, min-SNR-5 loss
   weighting (converges several times faster than the plain loss, which matters on CPU), 10% caption dropout for
   classifier-free guidance, and an EMA of both networks, which is what gets exported.

Every random draw of step ``k`` comes from a generator seeded by ``(seed, k)``, so an interrupted and resumed run
sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..io import atomic_dir, atomic_file
from ..models.build import assemble_pipeline
from ..models.tokenizer import MODEL_MAX_LENGTH, clip_tokenizer
from ..validation import Seed
from .generator import generate_mixed
from .models import Architecture, build_text_encoder, build_unet, build_vae, train_scheduler


@dataclass
class WorldTrainConfig:
    """Hyper-parameters of a world training run. Changing one of them in a run directory is refused."""

    seed: Seed = field(default=0, metadata={"help": "seed of the data, the initial weights and every batch"})
    n_images: int = field(default=200_000, metadata={"help": "training images drawn from the world"})
    vae_steps: int = field(default=1500, metadata={"help": "autoencoder optimisation steps"})
    vae_batch: int = field(default=32, metadata={"help": "autoencoder batch size"})
    vae_lr: float = field(default=1e-3, metadata={"help": "autoencoder learning rate (AdamW)"})
    vae_kl: float = field(default=1e-6, metadata={"help": "weight of the KL term of the autoencoder"})
    steps: int = field(default=20_000, metadata={"help": "diffusion optimisation steps (UNet + text encoder)"})
    batch: int = field(default=64, metadata={"help": "diffusion batch size (64 beat 128 per CPU-second)"})
    lr: float = field(default=6e-4, metadata={"help": "diffusion learning rate (AdamW, linear warm-up)"})
    warmup: int = field(default=200, metadata={"help": "warm-up steps of the diffusion learning rate"})
    ema_decay: float = field(default=0.998, metadata={"help": "EMA decay of the exported weights"})
    cfg_dropout: float = field(default=0.1, metadata={"help": "probability of training on the empty caption"})
    min_snr: float = field(default=5.0, metadata={"help": "gamma of min-SNR loss weighting"})
    checkpoint_every: int = field(default=250, metadata={"help": "diffusion steps between checkpoints"})
    arch: Architecture = field(default_factory=Architecture)

    def __post_init__(self) -> None:
        if isinstance(self.arch, dict):
            self.arch = Architecture(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.arch.items()})
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("seed", "arch", "vae_kl") and not value > 0:
                raise ConfigError(f"world training '{f.name}' must be positive, got {value}")

    # Fields that may change when resuming (they do not change what the first k steps compute).
    RESUMABLE = ("steps", "vae_steps", "checkpoint_every")

    def identity(self) -> dict:
        d = asdict(self)
        for key in self.RESUMABLE:
            d.pop(key)
        return d


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def _step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(seed, stage, step))


def _mix(seed: int, stage: str, step: int) -> int:
    """A stable 63-bit seed for (seed, stage, step); Python's hash() is salted per process, this is not."""
    h = 1469598103934665603
    for ch in f"{seed}/{stage}/{step}".encode():
        h = ((h ^ ch) * 1099511628211) % 2**64
    return h % 2**63


def world_dataset(config: WorldTrainConfig) -> tuple[np.ndarray, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and token ids (N, 77) of the training set: a pure function of the seed."""
    tokenizer = clip_tokenizer()
    images = np.empty((config.n_images, 32, 32, 3), dtype=np.uint8)
    captions: list[str] = []
    for i in range(config.n_images):
        sample = generate_mixed(config.seed * 1_000_000_007 + i)
        images[i] = np.asarray(sample.image)
        captions.append(sample.caption)
    unique = sorted(set(captions))
    ids = tokenizer(unique, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True).input_ids
    index = {c: k for k, c in enumerate(unique)}
    table = torch.tensor(ids, dtype=torch.int32)
    token_ids = table[torch.tensor([index[c] for c in captions])]
    return images.transpose(0, 3, 1, 2).copy(), token_ids


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(127.5).sub(1.0)


def _save(obj: dict, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


class WorldTrainer:
    """Runs (or resumes) the stages in ``run_dir``. ``deadline`` (a time.time()) stops early, after a checkpoint."""

    def __init__(self, run_dir: str | Path, config: WorldTrainConfig, log: Callable[[str], None] = _log_default):
        self.run_dir = Path(run_dir)
        self.config = config
        self.log = log
        self._data: tuple[np.ndarray, torch.Tensor] | None = None

    # -- bookkeeping ----------------------------------------------------------------------------------------------

    def _check_config(self) -> None:
        path = self.run_dir / "config.json"
        if path.exists():
            saved = json.loads(path.read_text())
            old = WorldTrainConfig(**{k: v for k, v in saved.items() if k != "RESUMABLE"})
            if old.identity() != self.config.identity():
                raise ConfigError(
                    f"run directory '{self.run_dir}' was trained with another config; use a new --run-dir or the "
                    f"same settings (only {', '.join(WorldTrainConfig.RESUMABLE)} may change)"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(asdict(self.config), indent=2))

    def _dataset(self) -> tuple[np.ndarray, torch.Tensor]:
        if self._data is None:
            t0 = time.time()
            self._data = world_dataset(self.config)
            self.log(f"data: {self.config.n_images} images in {time.time() - t0:.0f}s")
        return self._data

    def _token_ids(self) -> torch.Tensor:
        path = self.run_dir / "tokens.pt"
        if not path.exists():
            _save({"ids": self._dataset()[1]}, path)
        return torch.load(path)["ids"]

    # -- stage 2: autoencoder -------------------------------------------------------------------------------------

    def _vae(self):
        """The autoencoder and optimiser of the latest checkpoint (fresh ones if there is none)."""
        cfg = self.config
        path = self.run_dir / "vae.pt"
        torch.manual_seed(_mix(cfg.seed, "vae-init", 0))
        vae = build_vae(cfg.arch)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        state = torch.load(path) if path.exists() else {"step": 0, "losses": []}
        if "model" in state:
            vae.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
        return vae, opt, state

    def train_vae(self, deadline: float | None = None):
        cfg = self.config
        path = self.run_dir / "vae.pt"
        vae, opt, state = self._vae()
        if state["step"] >= cfg.vae_steps:
            return vae, state
        images = self._dataset()[0]
        vae.train()
        step, t0, window = state["step"], time.time(), []
        while step < cfg.vae_steps:
            g = _step_generator(cfg.seed, "vae", step)
            idx = torch.randint(len(images), (cfg.vae_batch,), generator=g)
            x = _to_unit(images[idx.numpy()])
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
            recon = vae.decode(z).sample
            kl = posterior.kl().mean() / x[0].numel()
            loss = F.l1_loss(recon, x) + cfg.vae_kl * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            window.append(loss.item())
            if step % 100 == 0 or step == cfg.vae_steps:
                state["losses"].append((step, float(np.mean(window))))
                self.log(f"vae step {step}/{cfg.vae_steps} loss {np.mean(window):.4f} ({time.time() - t0:.0f}s)")
                window = []
                _save({"step": step, "model": vae.state_dict(), "opt": opt.state_dict(),
                       "losses": state["losses"]}, path)  # fmt: skip
                if deadline is not None and time.time() > deadline:
                    break
        return vae, {"step": step, "losses": state["losses"]}

    # -- stage 3: latents -----------------------------------------------------------------------------------------

    def latents(self, vae) -> dict:
        path = self.run_dir / "latents.pt"
        if path.exists():
            return torch.load(path)
        images = self._dataset()[0]
        vae.eval()
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(images), 512):
                post = vae.encode(_to_unit(images[start : start + 512])).latent_dist
                means.append(post.mean.half())
                stds.append(post.std.half())
        mean, std = torch.cat(means), torch.cat(stds)
        scaling = float(1.0 / mean.float().std())
        out = {"mean": mean, "std": std, "scaling_factor": scaling}
        _save(out, path)
        self.log(f"latents: {tuple(mean.shape)}, scaling factor {scaling:.4f}")
        return out

    # -- stage 4: diffusion ---------------------------------------------------------------------------------------

    def _diffusion_models(self):
        cfg = self.config
        torch.manual_seed(_mix(cfg.seed, "diffusion-init", 0))
        unet, text_encoder = build_unet(cfg.arch), build_text_encoder(cfg.arch)
        ema_unet, ema_text = build_unet(cfg.arch), build_text_encoder(cfg.arch)
        ema_unet.load_state_dict(unet.state_dict())
        ema_text.load_state_dict(text_encoder.state_dict())
        return unet, text_encoder, ema_unet, ema_text

    def load_diffusion(self):
        """The EMA networks and state of the latest diffusion checkpoint (untrained ones if there is none)."""
        _, _, ema_unet, ema_text = self._diffusion_models()
        path = self.run_dir / "diffusion.pt"
        state = torch.load(path) if path.exists() else {"step": 0, "losses": []}
        if "ema_unet" in state:
            ema_unet.load_state_dict(state["ema_unet"])
            ema_text.load_state_dict(state["ema_text"])
        return ema_unet, ema_text, state

    def train_diffusion(self, latents: dict, deadline: float | None = None) -> dict:
        cfg = self.config
        path = self.run_dir / "diffusion.pt"
        unet, text_encoder, ema_unet, ema_text = self._diffusion_models()
        params = [*unet.parameters(), *text_encoder.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        state = torch.load(path) if path.exists() else {"step": 0, "losses": [], "seconds": 0.0}
        if "unet" in state:
            for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
                module.load_state_dict(state[key])
            opt.load_state_dict(state["opt"])
        token_ids = self._token_ids().long()
        empty = torch.tensor(
            clip_tokenizer()("", padding="max_length", max_length=MODEL_MAX_LENGTH).input_ids, dtype=torch.long
        )
        mean, std, scaling = latents["mean"], latents["std"], latents["scaling_factor"]
        scheduler = train_scheduler()
        alphas = scheduler.alphas_cumprod
        snr = alphas / (1 - alphas)
        weight = snr.clamp(max=cfg.min_snr) / snr
        unet.train()
        text_encoder.train()
        step, t0, window = state["step"], time.time(), []
        seconds0 = state.get("seconds", 0.0)
        while step < cfg.steps:
            g = _step_generator(cfg.seed, "diffusion", step)
            idx = torch.randint(len(mean), (cfg.batch,), generator=g)
            z0 = mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=g)
            z0 = z0 * scaling
            ids = token_ids[idx]
            drop = torch.rand(cfg.batch, generator=g) < cfg.cfg_dropout
            ids = torch.where(drop[:, None], empty[None], ids)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=g)
            noise = torch.randn(z0.shape, generator=g)
            noisy = scheduler.add_noise(z0, noise, t)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
            pred = unet(noisy, t, text_encoder(ids)[0]).sample
            loss = (weight[t] * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            _ema_update(ema_unet, unet, cfg.ema_decay)
            _ema_update(ema_text, text_encoder, cfg.ema_decay)
            step += 1
            window.append(loss.item())
            last = step == cfg.steps or (deadline is not None and time.time() > deadline)
            if step % 50 == 0 or last:
                state["losses"].append((step, float(np.mean(window))))
                window = []
                elapsed = seconds0 + time.time() - t0
                self.log(f"diffusion step {step}/{cfg.steps} loss {state['losses'][-1][1]:.4f} ({elapsed:.0f}s)")
            if step % cfg.checkpoint_every == 0 or last:
                state = {
                    "step": step, "unet": unet.state_dict(), "text": text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(), "opt": opt.state_dict(),
                    "losses": state["losses"], "seconds": seconds0 + time.time() - t0,
                }  # fmt: skip
                _save(state, path)
            if last:
                break
        return state

    # -- all stages + export --------------------------------------------------------------------------------------

    def run(self, out: str | Path | None = None, deadline: float | None = None) -> dict:
        """Run or resume every stage; export the pipeline to ``out`` when given. Returns a training summary."""
        self._check_config()
        vae, vae_state = self.train_vae(deadline)
        if vae_state["step"] < self.config.vae_steps:
            self.log("stopped during the autoencoder stage (deadline); run again to resume")
            return self.summary()
        latents = self.latents(vae)
        self.train_diffusion(latents, deadline)
        if out is not None:
            self.export(out)
        return self.summary()

    def summary(self) -> dict:
        vae_path, diff_path = self.run_dir / "vae.pt", self.run_dir / "diffusion.pt"
        vae_state = torch.load(vae_path) if vae_path.exists() else {"step": 0, "losses": []}
        diff_state = torch.load(diff_path) if diff_path.exists() else {"step": 0, "losses": [], "seconds": 0}
        return {
            "config": asdict(self.config),
            "vae_step": vae_state["step"],
            "vae_final_loss": vae_state["losses"][-1][1] if vae_state["losses"] else None,
            "diffusion_step": diff_state["step"],
            "diffusion_final_loss": diff_state["losses"][-1][1] if diff_state["losses"] else None,
            "diffusion_losses": diff_state["losses"],
            "diffusion_seconds": diff_state.get("seconds", 0.0),
        }

    def export(self, out: str | Path) -> Path:
        """Save the EMA weights of the latest checkpoint as a StableDiffusionPipeline (safetensors) at ``out``.

        The text encoder's weights are stored in float16 (its 49408-row token embedding is half the model) but its
        config says float32, so transformers loads it in float32 like the rest: a pipeline that needed
        ``torch_dtype`` to run at all would break every caller. UNet and VAE are stored in float32.
        """
        vae, _, vae_state = self._vae()
        if vae_state["step"] < self.config.vae_steps or not (self.run_dir / "latents.pt").exists():
            raise ConfigError(f"'{self.run_dir}' has no trained autoencoder yet; run `erasekit world train` first")
        latents = self.latents(vae)
        vae.register_to_config(scaling_factor=latents["scaling_factor"])
        unet, text_encoder, state = self.load_diffusion()
        pipe = assemble_pipeline(vae, unet, text_encoder.to(torch.float16))
        out = Path(out)
        with atomic_dir(out) as tmp:
            tmp.chmod(0o755)  # a temp dir is private; the exported model is meant to be shipped
            pipe.save_pretrained(tmp, safe_serialization=True)
            te_config = tmp / "text_encoder" / "config.json"
            te_config.write_text(json.dumps({**json.loads(te_config.read_text()), "dtype": "float32"}, indent=2))
            (tmp / "training.json").write_text(json.dumps(self.summary(), indent=2))
        self.log(f"exported step {state['step']} to {out}")
        return out
