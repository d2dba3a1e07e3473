"""The SDXL adapter: two CLIP text encoders, penultimate layers concatenated, plus pooled and size conditioning.

``StableDiffusionXLPipeline.encode_prompt`` builds the rows cross-attention reads from CLIP ViT-L (768) and OpenCLIP
bigG (1280): for each encoder the **penultimate** hidden states (``hidden_states[-2]``, without the final layer norm),
concatenated on the feature axis (77 x 2048 for SDXL base). The UNet also takes, through ``added_cond_kwargs``, the
second encoder's projected pooled embedding (``text_embeds``) and ``time_ids`` = (original height, width, crop top,
left, target height, width). The second tokenizer pads with "!" rather than EOS, so the padding rows of the two halves
differ; word positions are the same in both (one BPE), so token positions come from the first tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ModelLayoutError
from .adapter import Conditioning, ModelAdapter


class SDXLAdapter(ModelAdapter):
    """The adapter of ``StableDiffusionXLPipeline`` (and pipelines with the same two encoders and UNet inputs)."""

    family_name = "sdxl"

    def __init__(self, pipe: Any) -> None:
        kind = type(pipe).__name__
        if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is not None:
            raise ModelLayoutError(
                f"pipeline {kind} has only the second (OpenCLIP bigG) text encoder, as SDXL's refiner does; erasekit "
                "edits the SDXL base model (both encoders): erase from the base and use the refiner unchanged"
            )
        for part in ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            if getattr(pipe, part, None) is None:
                raise ModelLayoutError(
                    f"SDXL pipeline {kind} has no '{part}': an SDXL pipeline needs both text encoders and tokenizers"
                )
        if getattr(pipe.unet.config, "addition_embed_type", None) != "text_time":
            raise ModelLayoutError(
                f"pipeline {kind} has two text encoders but its UNet takes no pooled/size conditioning "
                "(addition_embed_type is not 'text_time'): not an SDXL layout erasekit knows"
            )
        self.text_encoder_2 = pipe.text_encoder_2
        self.tokenizer_2 = pipe.tokenizer_2
        super().__init__(pipe)
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2]
        expected = self.unet.add_embedding.linear_1.in_features
        given = self.pooled_dim + 6 * self.unet.config.addition_time_embed_dim
        if expected != given:
            raise ModelLayoutError(
                f"the UNet's added conditioning expects {expected} values but the second text encoder's pooled "
                f"embedding ({self.pooled_dim}) and six size ids give {given}: the UNet and encoders do not belong "
                "together"
            )

    @property
    def embedding_dim(self) -> int:
        """Width of the concatenated rows, the input width of every K/V projection (2048 for SDXL base)."""
        return self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        return self.text_encoder_2.config.projection_dim

    @property
    def family(self) -> str:
        return "sdxl"

    @property
    def encoders(self) -> list[tuple[Any, Any]]:
        return [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]

    def _token_ids(self, texts: list[str], positions: int | None) -> list[torch.Tensor]:
        return [self._ids(tokenizer, texts)[:, :positions] for tokenizer, _ in self.encoders]

    def encode_ids(self, ids: Sequence[torch.Tensor]) -> Conditioning:
        """Both encoders' penultimate layers, concatenated; the pooled embedding only for whole sequences (it is read
        at the EOS token, which a truncated encoding may not reach)."""
        halves, pooled = [], None
        device = self.text_encoder.device
        for (_, encoder), part in zip(self.encoders, ids, strict=True):
            out = encoder(part.to(encoder.device), output_hidden_states=True)
            halves.append(out.hidden_states[-2].to(device))
            if encoder is self.text_encoder_2 and part.shape[1] == self.max_length:
                pooled = out[0].to(device)
        return Conditioning(torch.cat(halves, dim=-1), pooled)

    def _ids(self, tokenizer: Any, texts: list[str]) -> torch.Tensor:
        for text in texts:
            self.word_tokens(text)  # one clear error for text the tokenizers cannot encode
        batch = tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                          return_tensors="pt")  # fmt: skip
        return batch.input_ids

    def time_ids(self, height: int, width: int) -> torch.Tensor:
        """SDXL's size conditioning for an image generated at its native crop: (h, w, 0, 0, h, w)."""
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    def unet_kwargs(self, cond: Conditioning, latents: torch.Tensor) -> dict[str, Any]:
        if cond.pooled is None:
            raise ModelLayoutError("SDXL's UNet needs the pooled text embedding: encode whole prompts")
        n = len(latents)
        side = [s * self.pipe.vae_scale_factor for s in latents.shape[-2:]]
        added = {
            "text_embeds": cond.pooled.to(latents.device, latents.dtype).expand(n, -1),
            "time_ids": self.time_ids(*side).to(latents.device, latents.dtype).expand(n, -1),
        }
        hidden = cond.hidden.to(latents.device, latents.dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": added}
