"""The FLUX.1 adapter: a transformer denoiser that reads T5's rows and CLIP's pooled vector.

``FluxPipeline.encode_prompt`` gives the transformer two things: T5-XXL's last hidden state at ``max_sequence_length``
positions (512 for FLUX.1-dev, 256 for schnell; T5 runs without an attention mask, so padding rows carry the prompt
too), and CLIP ViT-L's pooled output (768). Text reaches the image only through two linear maps that are linear in those
inputs: ``context_embedder`` (4096 -> 3072, with bias) on every T5 row, and ``time_text_embed.text_embedder.linear_1``
(768 -> 3072, with bias) on the pooled vector; every joint-attention projection after them sees the text after
modulation and norms. They are to FLUX what the cross-attention K/V projections are to a UNet: the closed-form edits
(UCE, RECE, SPEED) change their weights, keeping the bias (docs/methods/uce.md, "FLUX.1 and SD3").

T5 has no start token: a text's words sit at positions 0..n-1 and its end token at n (:attr:`word_offset` is 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelLayoutError
from .adapter import Conditioning, CrossAttentionLayer, ModelAdapter
from .cache import TensorCache

GUIDANCE = 3.5
"""FLUX.1-dev's embedded guidance when a method calls the transformer (the pipeline's default; EraseAnything's too)."""
FLUX_MAX_SEQUENCE = 512
"""FLUX.1-dev's T5 length; schnell's pipeline is called with 256 (set :attr:`FluxAdapter.max_length`)."""


class FluxAdapter(ModelAdapter):
    """The adapter of ``FluxPipeline`` (FLUX.1-dev and -schnell layouts)."""

    family_name = "flux"
    word_offset = 0

    def __init__(self, pipe: Any, max_sequence_length: int | None = None) -> None:
        self._take(pipe, "FLUX", "the transformer, CLIP (pooled) and T5 (rows) with their tokenizers")
        self.text_encoder, self.tokenizer = pipe.text_encoder_2, pipe.tokenizer_2  # the rows follow T5's positions
        self.clip_encoder, self.clip_tokenizer = pipe.text_encoder, pipe.tokenizer
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2]
        self._max_length = max_sequence_length or min(self.tokenizer.model_max_length, FLUX_MAX_SEQUENCE)
        rows, pooled = self.context_embedder, self.pooled_embedder
        if rows.in_features != self.embedding_dim or pooled.in_features != self.pooled_dim:
            raise ModelLayoutError(
                f"the transformer reads {rows.in_features}-d rows and a {pooled.in_features}-d pooled vector but the "
                f"T5 encoder gives {self.embedding_dim}-d rows and CLIP a {self.pooled_dim}-d pooled vector: the "
                "transformer and text encoders do not belong together"
            )
        self.check_finite()

    def _take(self, pipe: Any, family: str, needs: str) -> None:
        """Check the parts every transformer pipeline has and keep the pipeline and its transformer."""
        for part in ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            if getattr(pipe, part, None) is None:
                raise ModelLayoutError(
                    f"{family} pipeline {type(pipe).__name__} has no '{part}': erasekit needs {needs}"
                )
        self.pipe = pipe
        self.transformer = self.denoiser = pipe.transformer
        self.tensor_cache: TensorCache | None = TensorCache.from_env()

    # ----------------------------------------------------------------- layout
    @property
    def context_embedder(self) -> nn.Linear:
        return self.transformer.context_embedder

    @property
    def pooled_embedder(self) -> nn.Linear:
        return self.transformer.time_text_embed.text_embedder.linear_1

    @property
    def layers(self) -> list[CrossAttentionLayer]:
        raise ModelLayoutError(
            f"{type(self.transformer).__name__} has no cross-attention layers (text and image attend jointly): "
            "methods that edit or hook cross-attention do not apply to it; the closed forms (uce, rece, speed) edit "
            "its text projections"
        )

    @property
    def embedding_dim(self) -> int:
        return self.text_encoder.config.d_model

    @property
    def pooled_dim(self) -> int:
        return self.clip_encoder.config.hidden_size

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def family(self) -> str:
        return "flux"

    def text_projections(self, keys: bool = True, values: bool = True) -> dict[str, nn.Parameter]:
        """``context_embedder``'s weight: the one map of T5's rows, upstream of both keys and values of every joint
        block (so ``keys``/``values`` do not split it)."""
        return {"context_embedder.weight": self.context_embedder.weight} if keys or values else {}

    def pooled_projections(self) -> dict[str, nn.Parameter]:
        return {"time_text_embed.text_embedder.linear_1.weight": self.pooled_embedder.weight}

    # --------------------------------------------------------------- encoding
    @property
    def encoders(self) -> list[tuple[Any, nn.Module]]:
        return [(self.clip_tokenizer, self.clip_encoder), (self.tokenizer, self.text_encoder)]

    @property
    def pooled_encoders(self) -> list[tuple[Any, nn.Module]]:
        """``(tokenizer, encoder)`` pairs whose pooled outputs, side by side, are the pooled vector: FLUX's CLIP."""
        return [(self.clip_tokenizer, self.clip_encoder)]

    def _pooled_ids(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Input ids of every pooled encoder (its own 77 positions), checking first that T5 can encode each text."""
        for text in texts:
            self.word_tokens(text)  # one clear error for text the tokenizers cannot encode
        return [tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids for tokenizer, _ in self.pooled_encoders]  # fmt: skip

    @staticmethod
    def _pooled_output(out: Any) -> torch.Tensor:
        """A CLIP encoder's pooled vector: the projected one where it has a projection (SD3), else the EOS row."""
        return out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output

    @torch.no_grad()
    def encode_pooled(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """The pooled vectors alone, float32 on the CPU: only the CLIP encoder(s) run, not T5 (most of the cost)."""
        parts = []
        for (_, encoder), ids in zip(self.pooled_encoders, self._pooled_ids(texts), strict=True):
            chunks = [encoder(ids[i : i + batch_size].to(encoder.device)) for i in range(0, len(ids), batch_size)]
            parts.append(torch.cat([self._pooled_output(c).to("cpu", torch.float32) for c in chunks]))
        return torch.cat(parts, dim=-1)

    def _token_ids(self, texts: list[str], positions: int | None) -> list[torch.Tensor]:
        return [*self._pooled_ids(texts), self.tokenize(texts)[:, :positions]]

    def encode_ids(self, ids: Sequence[torch.Tensor]) -> Conditioning:
        """T5's last hidden state (the rows) and CLIP's pooled output, as ``FluxPipeline.encode_prompt`` computes
        them."""
        clip_ids, t5_ids = ids
        device = self.text_encoder.device
        rows = self.text_encoder(t5_ids.to(device))[0]
        pooled = self._pooled_output(self.clip_encoder(clip_ids.to(self.clip_encoder.device))).to(device)
        return Conditioning(rows, pooled)

    def _encode(self, texts: Sequence[str], positions: int | None, batch_size: int) -> Conditioning:
        """T5 attends both ways, so every row depends on the whole text: the full sequence is encoded and the first
        ``positions`` rows kept (a causal CLIP encoder can stop early; T5 cannot)."""
        if not texts:
            return Conditioning(torch.zeros(0, positions or self.max_length, self.embedding_dim),
                                torch.zeros(0, self.pooled_dim))  # fmt: skip
        whole = super()._encode(texts, None, batch_size)
        return Conditioning(whole.hidden[:, :positions], whole.pooled)

    # ------------------------------------------------------------- denoising
    @property
    def prediction_type(self) -> str:
        """Rectified flow: the transformer predicts the velocity ``noise - clean`` at ``x_t = (1 - s) x0 + s noise``."""
        return "flow"

    def latent_shape(self, batch: int, image_size: int | None = None) -> tuple[int, ...]:
        """Unpacked latents ``[n, C, h, w]`` (``C`` = the transformer's input channels / 4: each token packs 2x2)."""
        factor = self.pipe.vae_scale_factor
        size = image_size or self.pipe.default_sample_size * factor
        side = 2 * (size // (factor * 2))
        return (batch, self.transformer.config.in_channels // 4, side, side)

    def trajectory_timesteps(self, steps: int, latent_shape: tuple[int, ...]) -> Any:
        """The pipeline's flow-matching schedule for ``steps`` steps: sigmas from 1 down to 1/steps, shifted for the
        image's token count when the scheduler shifts dynamically (FLUX.1-dev), as ``FluxPipeline`` sets it."""
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        config = scheduler.config
        tokens = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))  # fmt: skip
        sigmas = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu if config.use_dynamic_shifting else None, device=self.device)
        return scheduler

    def text_attention_modules(self, strict: bool = False) -> list[str]:
        """The text stream's attention projections of the double-stream blocks (``add_q/k/v_proj``, ``to_add_out``;
        with ``strict`` only ``add_k_proj`` and ``add_v_proj``): what the text controls, as ESD-x trains in a UNet."""
        names = ("add_k_proj", "add_v_proj") if strict else ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
        return [n for n, m in self.transformer.named_modules()
                if isinstance(m, nn.Linear) and n.rpartition(".")[2] in names and ".attn." in n]  # fmt: skip

    def denoise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The velocity for unpacked ``latents`` at timestep ``t`` (sigma x 1000, as the scheduler counts), as
        ``FluxPipeline`` calls the transformer: latents packed 2x2 into tokens with their position ids, zero text ids,
        the timestep / 1000, and FLUX.1-dev's embedded guidance (``GUIDANCE``) when the model takes one."""
        n, c, h, w = latents.shape
        packed = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w // 4, c * 4)
        ids = torch.zeros(h // 2, w // 2, 3, device=latents.device, dtype=latents.dtype)
        ids[..., 1] += torch.arange(h // 2, device=latents.device)[:, None]
        ids[..., 2] += torch.arange(w // 2, device=latents.device)[None, :]
        hidden = cond.hidden.to(latents.device, latents.dtype).expand(n, -1, -1)
        kwargs = {
            "hidden_states": packed,
            "timestep": (t.to(latents.device, latents.dtype) / 1000).expand(n),
            "pooled_projections": cond.pooled.to(latents.device, latents.dtype).expand(n, -1),
            "encoder_hidden_states": hidden,
            "txt_ids": torch.zeros(hidden.shape[1], 3, device=latents.device, dtype=latents.dtype),
            "img_ids": ids.reshape(-1, 3),
            "guidance": (torch.full((n,), GUIDANCE, device=latents.device, dtype=latents.dtype)
                         if self.transformer.config.guidance_embeds else None),
        }  # fmt: skip
        out = self._call(self.transformer, params, (), kwargs).sample
        return out.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
