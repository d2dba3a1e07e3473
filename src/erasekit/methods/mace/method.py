"""MACE: mass concept erasure (Lu et al., CVPR 2024), a clean-room implementation; see docs/methods/mace.md.

Three stages, all on the cross-attention key/value projections (``attn2.to_k`` / ``to_v``):

1. :mod:`.refine` -- closed-form refinement: the tokens around each concept (the words after it, EOS, padding) are
   remapped to their values in the same template with a surrogate concept, for all concepts in one solve.
2. :mod:`.lora` -- one rank-1 LoRA per concept, trained on images of it (the model's own by default) to stop the
   pixels of the concept (a mask from :mod:`.masks`) from attending to its tokens, with concept-focal timesteps.
3. :mod:`.fusion` -- closed-form fusion of all LoRAs into one set of weights, preserving the original outputs on
   cached caption statistics and, optionally, on the retained texts.

The result is an :class:`~erasekit.edits.Edit` replacing the K/V weights (as UCE's), plus the stage-1 transform and,
on request, every concept's LoRA factors as extras. Each concept kind has a preset (the reference's configs, docs
"Presets and knobs"); training images, masks and prior captions may come from named sources (``erasekit.sources``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from rich.progress import Progress

from ...concepts import ConceptSet
from ...edits import Edit
from ...errors import ConfigError
from ...models.adapter import ModelAdapter, tensors_fingerprint
from ...progress import progress_bar
from ...registry import Registry
from ...sources import CAPTIONS, IMAGES, MASKS
from ...validation import Seed, check_at_least
from ..base import Method, register_method, single_kind
from .fusion import FusionAccumulator
from .lora import ConceptLoRA, LoRASettings, concept_seed, model_images, train_concept_lora
from .masks import AttentionMasks, GroundedSAM, MaskSource, encode_images, no_masks
from .prompts import TEMPLATES, prompt_pairs
from .refine import cached_text_gram, cfr_statistics, encodable, prior_gram, refine_transform

# The reference's configs (docs/methods/mace.md, "Presets and knobs"). Celebrities: preserve_weight grows with the
# number erased; the entry for the largest count not above the run's is used.
SD_PRESETS: dict[str, dict[str, Any]] = {
    "object": dict(lamb=100.0, cfr_preserve_scale=0.0, fuse_preserve_scale=0.0, preserve_weight=0.0,
                   learning_rate=1e-5, steps=50, cfis=True),
    "celebrity": dict(lamb=0.0, cfr_preserve_scale=1e-4, fuse_preserve_scale=1e-4,
                      preserve_weight={1: 8e3, 5: 5e4, 10: 8e4, 100: 2e5}, learning_rate=1e-4, steps=50, cfis=True),
    "explicit": dict(lamb=0.0, cfr_preserve_scale=7e-7, fuse_preserve_scale=7e-7, preserve_weight=0.0,
                     learning_rate=1e-5, steps=120, cfis=False),
    "style": dict(lamb=0.0, cfr_preserve_scale=1e-4, fuse_preserve_scale=1e-4, preserve_weight=8e4,
                  learning_rate=1e-4, steps=50, cfis=True),
}  # fmt: skip
SD_SAMPLING = dict(images_per_concept=8, sampling_steps=30, guidance=7.5, prior_captions=2000, prior_source="coco")
PRESETS: dict[str, dict[str, Any]] = {kind: {**values, **SD_SAMPLING} for kind, values in SD_PRESETS.items()}
"""One preset per concept kind for SD1.x: the reference's configs."""
PRESET_FIELDS = tuple(PRESETS["object"])

OWN_MASKS = ("auto", "attention", "none", "grounded_sam")
"""Mask choices MACE makes itself; any other ``mask_source`` names exact masks of ``erasekit.sources.MASKS``."""


def check_source(where: str, name: str, registry: Registry[Any], own: tuple[str, ...] = ()) -> None:
    """``name`` is one of MACE's ``own`` choices or a registered source, else a one-line error listing them all."""
    if name not in own and name not in registry:
        choices = ", ".join([*own, *registry.names()])
        raise ConfigError(f"{where}: unknown {registry.what} '{name}'; available: {choices}")


@dataclass
class MACEConfig:
    templates: int = field(default=30, metadata={"help": "template prompts per concept (1-30, stages 1-3)"})
    refine: bool = field(default=True, metadata={"help": "run stage 1 (closed-form refinement)"})
    lora: bool = field(default=True, metadata={"help": "run stages 2 and 3 (LoRAs and their fusion)"})
    lamb: float | None = field(default=None, metadata={"help": "ridge weight lambda of stages 1 and 3; None = preset"})
    cfr_preserve_scale: float | None = field(
        default=None, metadata={"help": "stage-1 preservation scale s (reference train_preserve_scale); None = preset"}
    )
    fuse_preserve_scale: float | None = field(
        default=None, metadata={"help": "stage-3 preservation scale beta (reference fuse_preserve_scale)"}
    )
    preserve_weight: float | dict[int, float] | None = field(
        default=None,
        metadata={"help": "weight pw of the retained-text statistics relative to the caption prior, or a table "
                          "{number of concepts: weight} (the largest entry not above the run's count is used)"},
    )  # fmt: skip
    reference_double_scale: bool = field(
        default=False,
        metadata={"help": "stage 1 weights the caches by s^2 as the reference code does (by mistake); default s"},
    )
    prior_captions: int | None = field(
        default=None, metadata={"help": "MS-COCO captions in the preservation prior (0 = none); None = preset"}
    )
    prior_source: str | None = field(
        default=None,
        metadata={"help": "caption source of the prior (erasekit.sources.CAPTIONS): coco (MS-COCO), or a plugin's"},
    )
    preserve_templates: bool = field(
        default=True, metadata={"help": "retained texts enter the statistics through the concept kind's templates"}
    )
    steps: int | None = field(default=None, metadata={"help": "LoRA training steps per concept; None = preset"})
    learning_rate: float | None = field(default=None, metadata={"help": "LoRA learning rate; None = preset"})
    rank: int = field(default=1, metadata={"help": "LoRA rank"})
    cfis: bool | None = field(default=None, metadata={"help": "concept-focal timestep sampling (else uniform)"})
    cfis_t1: float = field(default=200, metadata={"help": "CFIS lower timestep t1"})
    cfis_t2: float = field(default=400, metadata={"help": "CFIS upper timestep t2"})
    cfis_gamma: float = field(default=0.05, metadata={"help": "CFIS sharpness gamma"})
    loss: Literal["fro", "fro2"] = field(
        default="fro", metadata={"help": "fro: plain Frobenius norm (reference code); fro2: squared (paper Eq. 3)"}
    )
    suppress_eos_padding: bool = field(
        default=True, metadata={"help": "the LoRA loss also covers EOS and padding (reference), not only the concept"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the LoRA parameters"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clipping of the LoRA parameters"})
    images_per_concept: int | None = field(default=None, metadata={"help": "training images per concept (8)"})
    image_source: str = field(
        default="model",
        metadata={"help": "model: the base model's own images; else an image source (erasekit.sources.IMAGES)"},
    )
    sampling_steps: int | None = field(default=None, metadata={"help": "sampler steps of the training images"})
    guidance: float | None = field(default=None, metadata={"help": "guidance scale of the training images"})
    image_size: int | None = field(default=None, metadata={"help": "side of the training images; None = native"})
    mask_source: str = field(
        default="auto",
        metadata={"help": "auto (styles none, images of a source with masks its masks, else attention), attention, "
                          "none, grounded_sam, or a mask source (erasekit.sources.MASKS) of the image_source"},
    )  # fmt: skip
    mask_threshold: float = field(default=0.5, metadata={"help": "threshold of the normalised attention masks"})
    gsam_detector: str | None = field(default=None, metadata={"help": "local GroundingDINO folder (grounded_sam)"})
    gsam_segmenter: str | None = field(default=None, metadata={"help": "local SAM folder (grounded_sam)"})
    seed: Seed = field(default=2024, metadata={"help": "seed of images, LoRA init, steps and noise (reference 2024)"})
    work_dir: str | None = field(
        default=None, metadata={"help": "folder caching each finished concept's LoRA, so an interrupted fit resumes"}
    )
    export_loras: bool = field(default=False, metadata={"help": "store every concept's LoRA factors in the edit"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        where = "mace params"
        if not 1 <= self.templates <= 30:
            raise ConfigError(f"{where}.templates: must be in 1..30, got {self.templates}")
        if not (self.refine or self.lora):
            raise ConfigError(f"{where}.lora: refine and lora cannot both be false")
        check_at_least(
            self,
            where,
            0,
            (
                "lamb",
                "cfr_preserve_scale",
                "fuse_preserve_scale",
                "learning_rate",
                "weight_decay",
                "guidance",
                "steps",
                "prior_captions",
            ),
        )
        check_at_least(self, where, 1, ("rank", "images_per_concept", "sampling_steps", "image_size"))
        if not 0 < self.mask_threshold < 1:
            raise ConfigError(f"{where}.mask_threshold: must be in (0, 1), got {self.mask_threshold}")
        if not 0 <= self.cfis_t1 < self.cfis_t2:
            raise ConfigError(f"{where}.cfis_t2: CFIS needs 0 <= cfis_t1 < cfis_t2, got {self.cfis_t1}, {self.cfis_t2}")
        check_at_least(self, where, 0, ("cfis_gamma", "max_grad_norm"), strict=True)
        if self.prior_source is not None:
            check_source(f"{where}.prior_source", self.prior_source, CAPTIONS)
        check_source(f"{where}.image_source", self.image_source, IMAGES, ("model",))
        check_source(f"{where}.mask_source", self.mask_source, MASKS, OWN_MASKS)
        if self.mask_source not in OWN_MASKS and self.mask_source != self.image_source:
            raise ConfigError(
                f"{where}.mask_source: '{self.mask_source}' gives exact masks of its own images only; set "
                f"image_source: {self.mask_source}"
            )
        if self.mask_source == "grounded_sam" and not (self.gsam_detector and self.gsam_segmenter):
            raise ConfigError(f"{where}.mask_source: 'grounded_sam' needs gsam_detector and gsam_segmenter folders")


@dataclass
class Resolved:
    """The settings of one fit: the config with every ``None`` filled from the preset."""

    preset: str
    lamb: float
    cfr_scale: float
    fuse_scale: float
    preserve_weight: float
    prior_captions: int
    prior_source: str
    images_per_concept: int
    sampling_steps: int
    guidance: float
    lora: LoRASettings


def resolve(method: MACE, concepts: ConceptSet) -> Resolved:
    """The settings of one fit: the preset of the concepts' kind (or the named one) under the user's values."""
    kinds = {c.kind for c in concepts}
    # Concepts of several kinds run with one explicitly named preset (the reference erases one kind per run, and
    # crashes on a mix).
    kind = single_kind(concepts, "mace") if len(kinds) == 1 or method.preset not in method.all_presets() else None
    cfg = method.settings(kind)
    missing = [f.name for f in fields(cfg) if getattr(cfg, f.name) is None and f.name in PRESET_FIELDS]
    if missing:
        raise ConfigError(
            f"mace params.{missing[0]}: no preset gives {', '.join(missing)} for {kind} concepts; set them"
        )
    pick = lambda field_name: getattr(cfg, field_name)  # noqa: E731
    weight = cfg.preserve_weight
    if isinstance(weight, dict):
        weight = weight[max([k for k in weight if k <= len(concepts)] or [min(weight)])]
    lora = LoRASettings(
        steps=pick("steps"), learning_rate=pick("learning_rate"), rank=cfg.rank, cfis=pick("cfis"),
        cfis_t1=cfg.cfis_t1, cfis_t2=cfg.cfis_t2, cfis_gamma=cfg.cfis_gamma, loss=cfg.loss,
        suppress_eos_padding=cfg.suppress_eos_padding, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
    )  # fmt: skip
    s = pick("cfr_preserve_scale")
    return Resolved(
        preset="+".join(method._preset_names(kind)),
        lamb=pick("lamb"),
        cfr_scale=s * s if cfg.reference_double_scale else s,
        fuse_scale=pick("fuse_preserve_scale"),
        preserve_weight=float(weight),
        prior_captions=pick("prior_captions"),
        prior_source=pick("prior_source"),
        images_per_concept=pick("images_per_concept"),
        sampling_steps=pick("sampling_steps"),
        guidance=pick("guidance"),
        lora=lora,
    )


def lora_filename(base_key: str, concept: dict[str, Any]) -> str:
    """The work-dir file of one concept's LoRA: a digest of everything the LoRA depends on."""
    digest = hashlib.sha256((base_key + json.dumps(concept, sort_keys=True)).encode()).hexdigest()[:24]
    return f"lora-{digest}.safetensors"


@register_method
class MACE(Method):
    """Closed-form refinement, one LoRA per concept, closed-form fusion (all on cross-attention K/V)."""

    name = "mace"
    config_class = MACEConfig
    presets = PRESETS

    def fit(self, model: ModelAdapter, concepts: ConceptSet, *, mask_source: MaskSource | None = None) -> Edit:
        """Erase ``concepts``; ``mask_source`` overrides the configured one (any :class:`MaskSource` callable)."""
        cfg = self.config
        settings = resolve(self, concepts)
        seconds: dict[str, float] = {}
        with progress_bar(cfg.progress) as bar:
            clock = time.perf_counter()
            originals = {n: w.detach().clone() for n, w in model.kv_weights().items()}
            erased = [text for c in concepts for text in (c.text, *c.synonyms)]
            prior = prior_gram(model, settings.prior_captions, settings.prior_source, erased, bar)
            domain = self._domain_gram(model, concepts, bar)
            preserve = prior + settings.preserve_weight * domain
            seconds["statistics"] = time.perf_counter() - clock

            clock = time.perf_counter()
            d = model.embedding_dim
            if cfg.refine:
                S_cc, S_gc = cfr_statistics(model, list(concepts), cfg.templates, bar)
                T = refine_transform(S_cc, S_gc, settings.cfr_scale * preserve, settings.lamb)
            else:
                T = torch.eye(d, dtype=torch.float64)
            refined = {n: (w.double() @ T.to(w.device)).to(w.dtype) for n, w in originals.items()}
            seconds["refine"] = time.perf_counter() - clock

            extras = {"mace/cfr_transform": T.float()}
            losses: dict[str, list[float]] = {}
            weights = refined
            if cfg.lora:
                with model.float32():  # the LoRAs train in float32 also on a half-precision model
                    weights = self._loras_and_fusion(
                        model, concepts, settings, originals, refined, settings.fuse_scale * preserve, mask_source,
                        extras, losses, seconds, bar
                    )  # fmt: skip
        info = {"preset": settings.preset, "resolved": asdict(settings), "lora_loss_first_last": losses}
        return Edit.from_weights(
            self.name, self.edit_config(cfg), concepts.to_dict(), model, weights, extras=extras, info=info,
            log={"seconds": seconds},
        )  # fmt: skip

    def _domain_gram(self, model: ModelAdapter, concepts: ConceptSet, bar: Progress) -> torch.Tensor:
        """``sum e e^T`` over the retained texts (the reference's domain cache), through the templates if asked."""
        texts = concepts.preserve_texts()
        if self.config.preserve_templates and texts:
            kind = next(iter(concepts)).kind
            texts = [t.format(text) for text in texts for t in TEMPLATES[kind][: self.config.templates]]
        texts = encodable(model, texts)
        if not texts:
            return torch.zeros(model.embedding_dim, model.embedding_dim, dtype=torch.float64)
        return cached_text_gram(model, texts, bar)

    def _loras_and_fusion(
        self,
        model: ModelAdapter,
        concepts: ConceptSet,
        settings: Resolved,
        originals: dict[str, torch.Tensor],
        refined: dict[str, torch.Tensor],
        preserve: torch.Tensor,
        mask_source: MaskSource | None,
        extras: dict[str, torch.Tensor],
        losses: dict[str, list[float]],
        seconds: dict[str, float],
        bar: Progress,
    ) -> dict[str, torch.Tensor]:
        """Stages 2 and 3, concept by concept: only the fusion statistics are kept between concepts (and, with
        ``export_loras``, the LoRA factors in ``extras``); ``losses`` gets each LoRA's first and last loss."""
        cfg = self.config
        masks_for = mask_source or self._mask_source(next(iter(concepts)).kind)
        size = cfg.image_size or model.unet.config.sample_size * model.pipe.vae_scale_factor
        work = Path(cfg.work_dir) if cfg.work_dir else None
        base_key = self._work_key(settings, refined, size) if work else ""
        accumulator = FusionAccumulator({n: tuple(w.shape) for n, w in originals.items()})
        seconds.update({"images_masks": 0.0, "lora": 0.0, "fusion": 0.0})
        for index, concept in enumerate(bar.track(list(concepts), description="MACE stages 2-3")):
            old, _ = prompt_pairs(concept, cfg.templates)
            embeddings = model.conditioning(old)
            seed = concept_seed(cfg.seed, concept)
            path = work / lora_filename(base_key, concept.to_dict()) if work else None
            if path is not None and path.is_file():
                lora = ConceptLoRA.load(path, concept.text)
            else:
                clock = time.perf_counter()
                seeds = [seed + j for j in range(settings.images_per_concept)]
                with model.temporary_weights(originals):
                    if cfg.image_source == "model":
                        images = model_images(model, concept, seeds, settings.sampling_steps, settings.guidance, size)
                    else:
                        images = IMAGES.get(cfg.image_source)(concept, seeds)
                    masks = masks_for(model, concept, images, seeds)
                    posterior = encode_images(model, images)
                seconds["images_masks"] += time.perf_counter() - clock
                clock = time.perf_counter()
                with model.temporary_weights(refined):
                    lora = train_concept_lora(
                        model, concept, old, embeddings, posterior, masks, settings.lora, seed, bar
                    )
                seconds["lora"] += time.perf_counter() - clock
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    lora.save(path)
            clock = time.perf_counter()
            accumulator.add(embeddings.hidden, lora)
            seconds["fusion"] += time.perf_counter() - clock
            losses[concept.text] = [lora.losses[0], lora.losses[-1]] if lora.losses else []
            if cfg.export_loras:
                for name, (up, down) in lora.factors.items():
                    extras[f"mace/lora/{index}/{name}.up"] = up
                    extras[f"mace/lora/{index}/{name}.down"] = down
        clock = time.perf_counter()
        fused = accumulator.solve(refined, originals, preserve, settings.lamb)
        weights = {n: fused[n].to(originals[n].dtype) for n in originals}
        seconds["fusion"] += time.perf_counter() - clock
        return weights

    def _mask_source(self, kind: str) -> MaskSource:
        """The configured masks; ``auto``: none for styles, the exact masks of a source's images, else attention."""
        cfg = self.config
        name = cfg.mask_source
        if name == "auto":
            name = "none" if kind == "style" else cfg.image_source if cfg.image_source in MASKS else "attention"
        if name == "attention":
            return AttentionMasks(threshold=cfg.mask_threshold, seed=cfg.seed)
        if name == "grounded_sam":
            return GroundedSAM(cfg.gsam_detector, cfg.gsam_segmenter)
        if name == "none":
            return no_masks
        exact = MASKS.get(name)
        return lambda model, concept, images, seeds: exact(concept, seeds)

    def _work_key(self, settings: Resolved, refined: dict[str, torch.Tensor], size: int) -> str:
        """What a cached LoRA depends on: stage-2 settings, data settings, seed and the stage-1 weights."""
        cfg = self.config
        parts = [asdict(settings.lora), settings.images_per_concept, settings.sampling_steps, settings.guidance, size,
                 cfg.image_source, cfg.mask_source, cfg.mask_threshold, cfg.templates, cfg.seed,
                 tensors_fingerprint(refined)]  # fmt: skip
        return json.dumps(parts, default=str)


__all__ = ["MACE", "PRESETS", "MACEConfig"]
