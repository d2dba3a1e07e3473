"""What every method needs to know about a model, in one place.

The adapter finds the cross-attention layers of a Stable Diffusion UNet (``attn2``: to_k, to_v, to_out), encodes
prompts exactly as the pipeline does, locates a phrase's tokens inside a prompt, and makes the UNet calls a method
needs (:meth:`ModelAdapter.denoise`, with whatever extra conditioning the family takes). Methods never hard-code module
names, encoders or UNet arguments; they ask the adapter.

One adapter per family: :class:`ModelAdapter` itself serves SD1.x (CLIP ViT-L/14, ``last_hidden_state`` at 77
positions, padding with EOS) and SD2.x (OpenCLIP ViT-H, padding with "!", often v-prediction);
``ModelAdapter(pipe)`` returns :class:`~erasekit.models.sdxl.SDXLAdapter` for an SDXL pipeline (two text encoders)
and :class:`~erasekit.models.flux.FluxAdapter` / :class:`~erasekit.models.sd3.SD3Adapter` for FLUX.1 and SD3
(a transformer denoiser, no cross-attention layers: text enters through one linear map of the rows and one of the
pooled vector, :meth:`ModelAdapter.text_projections` and :meth:`ModelAdapter.pooled_projections`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModelLayoutError, NumericalError, TokenizationError
from .cache import TensorCache, digest, module_fingerprint
from .cache import tensors_fingerprint as tensors_fingerprint  # re-exported: edits fingerprint their base tensors


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention block of the UNet; ``name`` is its module path, e.g. ``mid_block.attentions.0....attn2``."""

    name: str
    module: nn.Module

    @property
    def to_k(self) -> nn.Linear:
        return self.module.to_k

    @property
    def to_v(self) -> nn.Linear:
        return self.module.to_v

    @property
    def to_out(self) -> nn.Linear:
        return self.module.to_out[0]

    @property
    def key_weight(self) -> str:
        """UNet state-dict name of the key projection's weight."""
        return f"{self.name}.to_k.weight"

    @property
    def value_weight(self) -> str:
        """UNet state-dict name of the value projection's weight."""
        return f"{self.name}.to_v.weight"


@dataclass
class Conditioning:
    """What the text gives a UNet call: ``hidden`` ``[n, L, d]`` (the rows cross-attention K/V read) and, for families
    that take it (SDXL), the ``pooled`` embedding ``[n, p]``."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index: int | slice | torch.Tensor | list[int]) -> Conditioning:
        index = [index] if isinstance(index, int) else index
        return Conditioning(self.hidden[index], None if self.pooled is None else self.pooled[index])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        move = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        return Conditioning(move(self.hidden), move(self.pooled))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        pooled = [p.pooled for p in parts]
        return Conditioning(
            torch.cat([p.hidden for p in parts]), None if any(x is None for x in pooled) else torch.cat(pooled)
        )


@dataclass(frozen=True)
class TokenPositions:
    """Positions in the padded token sequence: the phrase's tokens, the EOS token, and the padding after it."""

    phrase: list[int]
    eos: int
    padding: list[int]


class ModelAdapter:
    """A read-mostly view of a diffusers SD pipeline for erasure methods.

    Raises :class:`ModelLayoutError` for a pipeline whose layout is unknown and :class:`NumericalError` when the
    cross-attention weights are not finite.
    """

    family_name = "sd"

    word_offset = 1
    """Position of the first word token: 1 behind CLIP's start token; T5 (FLUX's rows) has none."""

    def __new__(cls, pipe: Any) -> ModelAdapter:
        transformer = type(getattr(pipe, "transformer", None)).__name__
        if cls is ModelAdapter and transformer == "FluxTransformer2DModel":
            from .flux import FluxAdapter

            return super().__new__(FluxAdapter)
        if cls is ModelAdapter and transformer == "SD3Transformer2DModel":
            from .sd3 import SD3Adapter

            return super().__new__(SD3Adapter)
        if cls is ModelAdapter and (
            getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None
        ):
            from .sdxl import SDXLAdapter

            return super().__new__(SDXLAdapter)
        return super().__new__(cls)

    def __init__(self, pipe: Any) -> None:
        for part in ("unet", "text_encoder", "tokenizer"):
            if getattr(pipe, part, None) is None:
                raise ModelLayoutError(
                    f"pipeline {type(pipe).__name__} has no '{part}': erasekit edits Stable Diffusion-style pipelines "
                    "(a UNet with cross-attention, a CLIP text encoder and its tokenizer)"
                )
        self.pipe = pipe
        self.unet = pipe.unet
        self.denoiser: nn.Module = pipe.unet
        """The network every edit changes (the UNet; FLUX's or SD3's transformer), which names the edit's tensors."""
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.text_encoders: list[nn.Module] = [pipe.text_encoder]
        self.tensor_cache: TensorCache | None = TensorCache.from_env()
        """Where encodings are looked up and stored (:mod:`erasekit.models.cache`); None bypasses it."""
        self.layers = self._find_cross_attention()
        self.check_finite()

    # ----------------------------------------------------------------- layout
    def _find_cross_attention(self) -> list[CrossAttentionLayer]:
        hidden = self.embedding_dim
        layers = []
        for name, module in self.unet.named_modules():
            if not name.endswith("attn2"):
                continue
            to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
            if not isinstance(to_k, nn.Linear) or not isinstance(to_v, nn.Linear):
                continue
            if to_k.in_features != hidden or to_v.in_features != hidden:
                raise ModelLayoutError(
                    f"cross-attention layer '{name}' expects {to_k.in_features}-d context but the text encoder(s) "
                    f"produce {hidden}-d embeddings; the UNet and text encoder(s) do not belong together"
                )
            layers.append(CrossAttentionLayer(name, module))
        if not layers:
            raise ModelLayoutError(
                f"found no cross-attention layers (attn2.to_k / attn2.to_v) in {type(self.unet).__name__}; "
                "this model layout is not supported"
            )
        return layers

    @property
    def embedding_dim(self) -> int:
        """Width of the text embeddings, i.e. the input width of every K/V projection (768 for SD1.x)."""
        return self.text_encoder.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def family(self) -> str:
        """``sd1`` when padding repeats EOS (SD1.x), ``sd2`` when it uses a separate pad token (SD2.x)."""
        return "sd1" if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id else "sd2"

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``epsilon`` (SD1.x, SD2 base, SDXL) or ``v_prediction`` (SD2.0/2.1 at 768 px)."""
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def kv_weights(self) -> dict[str, nn.Parameter]:
        """Every cross-attention key and value weight, by UNet state-dict name (live parameters, in layer order)."""
        return self.text_projections(keys=True, values=True)

    def text_projections(self, keys: bool = True, values: bool = True) -> dict[str, nn.Parameter]:
        """The weights of the linear maps that read the text rows (:meth:`encode`), by denoiser state-dict name (live
        parameters): what a closed-form edit (UCE, RECE, SPEED) changes. Here each cross-attention layer's key and/or
        value projection."""
        out: dict[str, nn.Parameter] = {}
        for layer in self.layers:
            if keys:
                out[layer.key_weight] = layer.to_k.weight
            if values:
                out[layer.value_weight] = layer.to_v.weight
        return out

    def pooled_projections(self) -> dict[str, nn.Parameter]:
        """The weights of linear maps that read the pooled text vector (:meth:`conditioning`'s ``pooled``) alone, which
        a closed-form edit changes too; none here (SDXL's pooled vector enters mixed with the size ids)."""
        return {}

    def unet_parameters(self, names: Sequence[str]) -> dict[str, nn.Parameter]:
        """Look up denoiser parameters by state-dict name, with a clear error for a name this model lacks."""
        params = dict(self.denoiser.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            kind = type(self.denoiser).__name__
            raise ModelLayoutError(f"the {kind} has no parameter '{missing[0]}' ({len(missing)} missing in all)")
        return {n: params[n] for n in names}

    def replace_weights(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy ``weights`` into the UNet's parameters of the same names, in place; return copies of what they
        replaced (``replace_weights(returned)`` puts the originals back bit for bit)."""
        params = self.unet_parameters(list(weights))
        originals = {n: p.detach().clone() for n, p in params.items()}
        _copy_into(params, weights)
        return originals

    @contextmanager
    def temporary_weights(
        self, weights: Mapping[str, torch.Tensor] | None = None, names: Iterable[str] = ()
    ) -> Iterator[dict[str, nn.Parameter]]:
        """Inside the block the UNet carries ``weights``; on exit every tensor named in ``weights`` or ``names``
        (e.g. tensors the block trains in place) is restored bit for bit, also after an exception.

        Yields the live parameters of all those names.
        """
        weights = dict(weights or {})
        params = self.unet_parameters(sorted({*weights, *names}))
        saved = {n: p.detach().clone() for n, p in params.items()}
        _copy_into(params, weights)
        try:
            yield params
        finally:
            _copy_into(params, saved)

    @contextmanager
    def float32(self) -> Iterator[None]:
        """Run the block with the pipeline's half-precision networks in float32, then put them back exactly.

        Training needs float32 master weights: float16 overflows to NaN and bfloat16 rounds small updates away.
        Half -> float32 -> half is lossless, so the pipeline leaves the block bit for bit as it entered.
        """
        parts = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
        networks = [getattr(self.pipe, part, None) for part in parts]
        half = [(n, n.dtype) for n in networks if n is not None and n.dtype in (torch.float16, torch.bfloat16)]
        for network, _ in half:
            network.float()
        try:
            yield
        finally:
            for network, dtype in half:
                network.to(dtype)

    def check_finite(self) -> None:
        for name, weight in {**self.text_projections(), **self.pooled_projections()}.items():
            if not torch.isfinite(weight).all():
                raise NumericalError(f"model weight '{name}' contains NaN or infinite values; the model is corrupted")

    # ------------------------------------------------------------- tokenizing
    def word_tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS; raises if the text cannot be encoded faithfully.

        Remembered per text: closed forms ask for the same texts' positions many times (SPEED: five times a text), and
        tokenizing was a tenth of a repeated 100-concept edit."""
        known = self.__dict__.setdefault("_word_ids", {})
        if text not in known:
            known[text] = self._check_words(text)
        return list(known[text])

    def _check_words(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if text.strip() and not ids:
            raise TokenizationError(f"the tokenizer turns '{text}' into no tokens at all")
        unk = self.tokenizer.unk_token_id
        specials = {self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        if unk is not None and unk not in specials and unk in ids:
            raise TokenizationError(
                f"the tokenizer does not know some words of '{text}' (they map to the unknown token)"
            )
        room = self.max_length - self.word_offset - 1  # start (CLIP) and end tokens take the rest
        if len(ids) > room:
            raise TokenizationError(
                f"'{text[:40]}...' is {len(ids)} tokens long; the text encoder takes at most {room}"
            )
        return ids

    def last_word_index(self, text: str) -> int:
        """Position of the last word token (CLIP: BOS is 0, words 1..n, EOS n+1); 0 (BOS) for an empty text (T5:
        words 0..n-1; 0, its EOS, for an empty text)."""
        return max(len(self.word_tokens(text)) + self.word_offset - 1, 0)

    def last_word_rows(self, text: str) -> list[int]:
        """Every row that holds the text's last word: one here; SD3 has it twice (its CLIP and its T5 segment)."""
        return [self.last_word_index(text)]

    def phrase_positions(self, prompt: str, phrase: str) -> list[int]:
        """Positions (in the 77-token sequence) of the first occurrence of ``phrase``'s tokens inside ``prompt``."""
        whole, part = self.word_tokens(prompt), self.word_tokens(phrase)
        if not part:
            raise TokenizationError("cannot locate an empty phrase in a prompt")
        for start in range(len(whole) - len(part) + 1):
            if whole[start : start + len(part)] == part:
                first = self.word_offset + start
                return list(range(first, first + len(part)))
        raise TokenizationError(f"'{phrase}' does not occur (as tokens) in the prompt '{prompt}'")

    def token_positions(self, prompt: str, phrase: str | None = None) -> TokenPositions:
        """Where a phrase, the EOS token and the padding sit in ``prompt``'s 77-token sequence.

        Methods that act on "the concept's tokens and everything after them" (UCE's legacy policy, MACE's remapping)
        need all three; padding rows matter because SD runs the text encoder without an attention mask.
        """
        eos = len(self.word_tokens(prompt)) + self.word_offset
        return TokenPositions(
            phrase=self.phrase_positions(prompt, phrase) if phrase is not None else [],
            eos=eos,
            padding=list(range(eos + 1, self.max_length)),
        )

    # --------------------------------------------------------------- encoding
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Input ids padded to the model's 77 positions, as the pipeline builds them."""
        for text in texts:
            self.word_tokens(text)
        batch = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return batch.input_ids

    @torch.no_grad()
    def encode(self, texts: Sequence[str], positions: int | None = None, batch_size: int = 32) -> torch.Tensor:
        """Per-token text embeddings ``[len(texts), positions or 77, d]`` in float32, on the CPU: the rows every
        cross-attention K/V projection reads.

        ``positions`` < 77 keeps only the first rows: CLIP's encoder is causal, so it stops there (the rows equal
        those of a full encoding to float noise) at a fraction of the cost; T5 (FLUX) attends both ways and encodes
        whole texts. Use it only when no EOS/padding row is needed.
        A text listed several times (e.g. one guide shared by many concepts) goes through the encoder once, and a text
        this model has encoded before (in any run) not at all: it comes from :attr:`tensor_cache`, bit for bit what the
        encoder gives. Encoding is what a closed-form edit spends most of its time on (benchmarks/README.md).
        """
        return self._encode(texts, positions, batch_size).hidden

    def encode_pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """The pooled vectors ``[n, p]`` of ``texts`` (float32, CPU), for families that take one; transformer
        adapters run only the encoders the pooled vector comes from."""
        return self.conditioning(texts).pooled

    @torch.no_grad()
    def conditioning(self, texts: Sequence[str], batch_size: int = 32) -> Conditioning:
        """Everything a UNet call needs from ``texts`` (float32, CPU): :meth:`encode`'s rows and the family's extras."""
        return self._encode(texts, None, batch_size)

    def _encode(self, texts: Sequence[str], positions: int | None, batch_size: int) -> Conditioning:
        if not texts:
            return Conditioning(torch.zeros(0, positions or self.max_length, self.embedding_dim))
        unique = list(dict.fromkeys(texts))
        if self.tensor_cache is None or self._encoders_hooked():
            encoded = self._encode_batches(self._token_ids(unique, positions), batch_size)
        else:
            encoded = self._encode_cached(self.tensor_cache, unique, positions, batch_size)
        if len(unique) == len(texts):
            return encoded
        row = {text: i for i, text in enumerate(unique)}
        return encoded[[row[text] for text in texts]]

    def _encode_batches(self, ids: list[torch.Tensor], batch_size: int) -> Conditioning:
        """``ids`` (one ``[n, L]`` tensor per encoder) through the text encoder(s), ``batch_size`` rows at a time,
        in float32 on the CPU."""
        n = len(ids[0])
        return Conditioning.cat(
            [
                self.encode_ids([part[start : start + batch_size] for part in ids]).to("cpu", torch.float32)
                for start in range(0, n, batch_size)
            ]
        )

    def _encode_cached(
        self, cache: TensorCache, texts: list[str], positions: int | None, batch_size: int
    ) -> Conditioning:
        """:meth:`_encode_batches` through ``cache``: an entry's key is the encoders' fingerprint and a text's token
        ids (what the tokenizers make of it: a changed vocabulary changes the key), so it holds what the encoder gives
        for exactly those weights and ids. The encoder is batch-invariant (each row only attends within its text), so
        a row encoded in another batch is the same bits."""
        ids = self._token_ids(texts, positions)
        model_key = self.encoding_fingerprint()
        keys = [digest(model_key, *(part[i].numpy().tobytes() for part in ids)) for i in range(len(texts))]
        found = [cache.get("text", key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            fresh = self._encode_batches([part[missing] for part in ids], batch_size)
            for j, i in enumerate(missing):
                entry = {"hidden": fresh.hidden[j]}
                if fresh.pooled is not None:
                    entry["pooled"] = fresh.pooled[j]
                cache.put("text", keys[i], entry)
                found[i] = entry
            cache.evict()
        pooled = [entry.get("pooled") for entry in found]
        return Conditioning(
            torch.stack([entry["hidden"] for entry in found]),
            None if any(p is None for p in pooled) else torch.stack(pooled),
        )

    def _encoders_hooked(self) -> bool:
        """True while a forward hook watches or changes a text encoder (DuMo's prompt gate records every prompt the
        encoder sees): the encoder must then run, so the cache is bypassed."""
        hooks = nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for e in self.text_encoders for m in e.modules())

    def _token_ids(self, texts: list[str], positions: int | None) -> list[torch.Tensor]:
        """The input ids of ``texts``, one ``[n, positions or 77]`` tensor per :attr:`encoders` pair."""
        return [self.tokenize(texts)[:, :positions]]

    def encoding_fingerprint(self) -> str:
        """sha256 of everything an encoding depends on besides the token ids: the family (which layers it reads),
        each encoder's class, configuration and weights (:func:`~erasekit.models.cache.module_fingerprint`, hashed
        once per weights), the padding token (it sets the attention mask where the encoder takes one), and the device
        kind and torch version that computed it (their kernels round differently)."""
        parts = [self.family_name, type(self).__name__, torch.__version__]
        for tokenizer, encoder in self.encoders:
            parts += [type(encoder).__name__, encoder.device.type, encoder.config.to_json_string()]
            parts.append(str(tokenizer.pad_token_id))
            parts.append(module_fingerprint(encoder))
        return digest(*parts)

    def encode_ids(self, ids: Sequence[torch.Tensor]) -> Conditioning:
        """The conditioning of token ids, one ``[n, L]`` tensor per :attr:`encoders` pair, in the encoders' dtype
        and differentiable: :meth:`conditioning` for callers that build the ids or the input embeddings themselves
        (attacks optimise input embeddings through it).

        SD1.x/2.x: the ``last_hidden_state``, as the pipeline encodes prompts (SD2's converted encoders end one layer
        early, so that is its penultimate layer).
        """
        (ids,) = ids
        ids = ids.to(self.text_encoder.device)
        use_mask = bool(getattr(self.text_encoder.config, "use_attention_mask", False))
        mask = (ids != self.tokenizer.pad_token_id).long() if use_mask else None
        return Conditioning(self.text_encoder(ids, attention_mask=mask)[0])

    @property
    def encoders(self) -> list[tuple[Any, nn.Module]]:
        """``(tokenizer, text encoder)`` pairs whose outputs are concatenated into the rows K/V read, in order."""
        return [(self.tokenizer, self.text_encoder)]

    def noise_target(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet should predict for ``clean`` latents noised with ``noise`` at ``t``: the noise itself, or
        the velocity for a v-prediction model (SD2.0/2.1 768 px): training losses must follow the model's kind."""
        if self.prediction_type == "v_prediction":
            return self.pipe.scheduler.get_velocity(clean, noise, t.to(clean.device))
        if self.prediction_type != "epsilon":
            raise ModelLayoutError(
                f"the scheduler's prediction_type is '{self.prediction_type}': erasekit trains models that predict "
                "the noise (epsilon) or the velocity (v_prediction)"
            )
        return noise

    def unet_kwargs(self, cond: Conditioning, latents: torch.Tensor) -> dict[str, Any]:
        """The keyword arguments of ``unet(latents, t, **kwargs)`` for this family."""
        return {"encoder_hidden_states": cond.hidden.to(latents.device, latents.dtype)}

    def denoise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The denoiser's prediction for ``latents`` at timestep ``t`` under ``cond`` (every denoiser call a method
        makes); ``params`` (state-dict name -> tensor) stand in for the denoiser's own for this call."""
        return self._call(self.unet, params, (latents, t), self.unet_kwargs(cond, latents)).sample

    @staticmethod
    def _call(module: nn.Module, params: Mapping[str, torch.Tensor] | None, args: tuple, kwargs: dict) -> Any:
        if params is None:
            return module(*args, **kwargs)
        return torch.func.functional_call(module, dict(params), args, kwargs)

    def latent_shape(self, batch: int, image_size: int | None = None) -> tuple[int, ...]:
        """The shape of ``batch`` latents the denoiser takes for ``image_size``-pixel images (default: the model's)."""
        side = image_size // self.pipe.vae_scale_factor if image_size else self.unet.config.sample_size
        return (batch, self.unet.config.in_channels, side, side)

    def trajectory_timesteps(self, steps: int, latent_shape: tuple[int, ...]) -> Any:
        """A scheduler set to ``steps`` sampling steps whose ``step`` moves a trajectory: DDIM (eta 0) from the
        pipeline's scheduler config, whatever scheduler the pipeline samples with."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def text_attention_modules(self, strict: bool = False) -> list[str]:
        """Denoiser module paths of what reads the text: every Linear of the cross-attention layers, or with
        ``strict`` only their key and value projections (ESD's ``x`` and ``x-strict``)."""
        if strict:
            return [f"{layer.name}.{proj}" for layer in self.layers for proj in ("to_k", "to_v")]
        prefixes = tuple(layer.name + "." for layer in self.layers)
        return [n for n, m in self.unet.named_modules() if n.startswith(prefixes) and isinstance(m, nn.Linear)]

    def fingerprint(self) -> str:
        """sha256 of the text encoders' weights: a cache key for text embeddings of this model (hashed once per
        weights, :func:`~erasekit.models.cache.module_fingerprint`)."""
        digests = [module_fingerprint(encoder) for encoder in self.text_encoders]
        return digests[0] if len(digests) == 1 else digest(*digests)


def denoiser_of(pipe: Any) -> tuple[str, nn.Module]:
    """The pipeline component every edit changes and its name: ``("unet", pipe.unet)``, or a transformer pipeline's
    ``("transformer", pipe.transformer)`` (FLUX, SD3)."""
    transformer = getattr(pipe, "transformer", None)
    return ("transformer", transformer) if transformer is not None else ("unet", pipe.unet)


def _copy_into(params: Mapping[str, nn.Parameter], weights: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, weight in weights.items():
            params[name].copy_(weight.to(params[name].device, params[name].dtype))
