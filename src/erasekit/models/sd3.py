"""The SD3 / SD3.5 adapter: a joint-attention transformer that reads CLIP-L ‖ CLIP-G rows followed by T5 rows.

``StableDiffusion3Pipeline.encode_prompt`` builds one sequence of rows: the penultimate hidden states of CLIP ViT-L
(768) and OpenCLIP bigG (1280) concatenated on the feature axis at 77 positions and zero-padded to T5's width (4096),
then T5-XXL's last hidden state at ``max_sequence_length`` positions (256 by default; zeros when the pipeline has no
T5). The pooled vector is both CLIP encoders' projected outputs side by side (768 + 1280). As in FLUX, text enters
the transformer only through two maps linear in those inputs: ``context_embedder`` on every row and
``time_text_embed.text_embedder.linear_1`` on the pooled vector; the closed-form edits change their weights.

Positions follow the first CLIP tokenizer (start token at 0, words from 1); a text's T5 rows start at 77, where its
words sit again (T5 has no start token): :meth:`SD3Adapter.last_word_rows` names both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelLayoutError, TokenizationError
from .adapter import Conditioning
from .flux import FluxAdapter

SD3_T5_LENGTH = 256
"""``StableDiffusion3Pipeline``'s default ``max_sequence_length``."""


class SD3Adapter(FluxAdapter):
    """The adapter of ``StableDiffusion3Pipeline`` (SD3 and SD3.5 layouts; T5 optional, as the pipeline allows)."""

    family_name = "sd3"
    word_offset = 1

    def __init__(self, pipe: Any, max_sequence_length: int | None = None) -> None:
        self._take(pipe, "SD3", "the transformer and both CLIP encoders with their tokenizers (T5 is optional)")
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder  # positions: the first CLIP tokenizer
        self.text_encoder_2, self.tokenizer_2 = pipe.text_encoder_2, pipe.tokenizer_2
        self.t5_encoder, self.t5_tokenizer = getattr(pipe, "text_encoder_3", None), getattr(pipe, "tokenizer_3", None)
        self.text_encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2, self.t5_encoder) if e is not None]
        self.t5_length = max_sequence_length or SD3_T5_LENGTH
        clip_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        if clip_width > self.embedding_dim:
            raise ModelLayoutError(
                f"the transformer reads {self.embedding_dim}-d rows but the CLIP encoders give {clip_width}: the "
                "transformer and text encoders do not belong together"
            )
        self._check_widths()
        self.check_finite()

    def _check_widths(self) -> None:
        rows, pooled = self.context_embedder, self.pooled_embedder
        t5 = self.t5_encoder.config.d_model if self.t5_encoder is not None else rows.in_features
        if rows.in_features != t5 or pooled.in_features != self.pooled_dim:
            raise ModelLayoutError(
                f"the transformer reads {rows.in_features}-d rows and a {pooled.in_features}-d pooled vector but the "
                f"encoders give {t5}-d T5 rows and a {self.pooled_dim}-d pooled vector: the transformer and text "
                "encoders do not belong together"
            )

    @property
    def embedding_dim(self) -> int:
        return self.transformer.config.joint_attention_dim

    @property
    def pooled_dim(self) -> int:
        return self.text_encoder.config.projection_dim + self.text_encoder_2.config.projection_dim

    @property
    def clip_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def max_length(self) -> int:
        """Rows per text: 77 CLIP rows, then the T5 rows."""
        return self.clip_length + self.t5_length

    @property
    def family(self) -> str:
        return "sd3"

    def _check_words(self, text: str) -> list[int]:
        ids = super()._check_words(text)
        if len(ids) > self.clip_length - 2:
            raise TokenizationError(
                f"'{text[:40]}...' is {len(ids)} tokens long; SD3's CLIP encoders take at most {self.clip_length - 2}"
            )
        return ids

    def last_word_rows(self, text: str) -> list[int]:
        """The rows of the text's last word: in the CLIP segment and, with T5, in the T5 segment (its last piece)."""
        rows = [self.last_word_index(text)]
        if self.t5_encoder is not None:
            pieces = self.t5_tokenizer(text, add_special_tokens=False).input_ids
            rows.append(self.clip_length + max(len(pieces) - 1, 0))
        return rows

    @property
    def encoders(self) -> list[tuple[Any, nn.Module]]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return pairs + ([(self.t5_tokenizer, self.t5_encoder)] if self.t5_encoder is not None else [])

    @property
    def pooled_encoders(self) -> list[tuple[Any, nn.Module]]:
        """Both CLIP encoders: SD3's pooled vector is their projected outputs side by side."""
        return [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]

    def _token_ids(self, texts: list[str], positions: int | None) -> list[torch.Tensor]:
        ids = self._pooled_ids(texts)
        if self.t5_encoder is not None:
            ids.append(self.t5_tokenizer(list(texts), padding="max_length", max_length=self.t5_length,
                                         truncation=True, return_tensors="pt").input_ids)  # fmt: skip
        return ids

    def encode_ids(self, ids: Sequence[torch.Tensor]) -> Conditioning:
        """``encode_prompt``'s rows and pooled vector for token ids (CLIP-L, CLIP-G and, with T5, T5 ids)."""
        halves, pooled = [], []
        device = self.text_encoder.device
        for encoder, part in zip((self.text_encoder, self.text_encoder_2), ids[:2], strict=True):
            out = encoder(part.to(encoder.device), output_hidden_states=True)
            halves.append(out.hidden_states[-2].to(device))
            pooled.append(self._pooled_output(out).to(device))
        clip = torch.cat(halves, dim=-1)
        if self.t5_encoder is not None:
            t5 = self.t5_encoder(ids[2].to(self.t5_encoder.device))[0].to(device, clip.dtype)
        else:
            t5 = clip.new_zeros(len(clip), self.t5_length, self.embedding_dim)
        clip = torch.nn.functional.pad(clip, (0, self.embedding_dim - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5], dim=1), torch.cat(pooled, dim=-1))

    # ------------------------------------------------------------- denoising
    def latent_shape(self, batch: int, image_size: int | None = None) -> tuple[int, ...]:
        side = image_size // self.pipe.vae_scale_factor if image_size else self.transformer.config.sample_size
        return (batch, self.transformer.config.in_channels, side, side)

    def trajectory_timesteps(self, steps: int, latent_shape: tuple[int, ...]) -> Any:
        """SD3's flow-matching schedule (its scheduler's fixed shift) for ``steps`` steps."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def denoise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The velocity for ``latents`` at timestep ``t`` (sigma x 1000), as ``StableDiffusion3Pipeline`` calls it."""
        n = len(latents)
        kwargs = {
            "hidden_states": latents,
            "timestep": t.to(latents.device, latents.dtype).expand(n),
            "encoder_hidden_states": cond.hidden.to(latents.device, latents.dtype).expand(n, -1, -1),
            "pooled_projections": cond.pooled.to(latents.device, latents.dtype).expand(n, -1),
        }
        return self._call(self.transformer, params, (), kwargs).sample
