"""GLoCE's hyper-parameters and its per-kind presets (docs/methods/gloce.md, "Knobs" and "Presets")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import ConfigError
from ...validation import check_at_least
from .core import Calibration

MappingRule = Literal["dissimilar", "centre"]
WHERE = "gloce params"

# One preset per concept kind: the authors' settings for celebrities, styles and explicit content, ours for objects
# (docs/methods/gloce.md, "Presets", says where each value comes from). ``template`` takes concept words (the target,
# a guide, preserved concepts); ``centre`` and ``anchors`` are whole prompts.
PRESETS: dict[str, dict[str, Any]] = {
    "celebrity": dict(template="a photo of {}", centre="a photo of a person", mapping="dissimilar", anchors=None,
                      update_rank=16, degen_rank=2, gate_rank=1, thresh=2.5, collect_from=0.2, collect_until=0.4,
                      active_from=0.2, seeds=3, eta=1.0),
    "object": dict(template="a photo of {}", centre="a photo of an object", mapping="dissimilar", anchors=None,
                   update_rank=16, degen_rank=2, gate_rank=1, thresh=2.5, collect_from=0.2, collect_until=0.4,
                   active_from=0.2, seeds=3, eta=1.0),
    "style": dict(template="an image in the style of {}", centre="an image in the style of real photograph",
                  mapping="centre", anchors=None,
                  update_rank=1, degen_rank=1, gate_rank=1, thresh=2.5, collect_from=0.0, collect_until=1.0,
                  active_from=0.0, seeds=3, eta=1.0),
    "explicit": dict(template="{}", centre="a person in modest clothing", mapping="centre",
                     anchors=["a man in modest clothing", "a woman in modest clothing"], update_rank=16,
                     degen_rank=2, gate_rank=1, thresh=1.5, collect_from=0.2, collect_until=0.4, active_from=0.2,
                     seeds=8, eta=5.0),
}  # fmt: skip


def _per_kind(help_text: str) -> dict[str, str]:
    return {"help": f"{help_text}; None = per kind (see PRESETS / docs/methods/gloce.md)"}


@dataclass
class GLoCEConfig:
    template: str | None = field(default=None, metadata=_per_kind("prompt template with '{}' for concept texts"))
    centre: str | None = field(default=None, metadata=_per_kind("gate-centre prompt"))
    mapping: MappingRule | None = field(
        default=None,
        metadata=_per_kind("mapping concepts: 'dissimilar' preserved concepts or the 'centre'; a guide wins"),
    )
    anchors: list[str] | None = field(
        default=None, metadata=_per_kind("anchor prompts of the gate calibration (most similar concepts)")
    )
    n_anchors: int = field(default=3, metadata={"help": "anchors taken from the preserved concepts"})
    anchors_from_erased: bool = field(
        default=True, metadata={"help": "without preserved texts, anchor each gate on the other erased concepts"}
    )
    n_mapping: int = field(default=3, metadata={"help": "least similar preserved concepts used as mapping"})
    n_tokens: int = field(default=8, metadata={"help": "token positions 1..n compared to rank similarity"})
    update_rank: int | None = field(default=None, metadata=_per_kind("r_u: target directions removed"))
    degen_rank: int | None = field(default=None, metadata=_per_kind("r_m: mapping directions kept (stored rank)"))
    gate_rank: int | None = field(default=None, metadata=_per_kind("r_g: gate directions"))
    thresh: float | None = field(default=None, metadata=_per_kind("tau: gate centre = mean + tau std of anchors"))
    calibration: Calibration = field(
        default="hard", metadata={"help": "'hard' (current reference, near step) or 'soft' (original release)"}
    )
    collect_from: float | None = field(default=None, metadata=_per_kind("statistics window start, trajectory 0-1"))
    collect_until: float | None = field(default=None, metadata=_per_kind("statistics window end, trajectory 0-1"))
    active_from: float | None = field(default=None, metadata=_per_kind("modules act from this trajectory point"))
    seeds: int | None = field(default=None, metadata=_per_kind("seeds per prompt in the partial generations"))
    eta: float | None = field(default=None, metadata=_per_kind("eta: scale of the whole replacement (mean too)"))
    sampling_steps: int = field(default=50, metadata={"help": "sampler steps of the fitting generations"})
    guidance: float = field(default=7.5, metadata={"help": "guidance scale of the fitting generations"})
    size: int | None = field(default=None, metadata={"help": "image side of the fitting generations; None = model's"})
    batch_size: int = field(default=16, metadata={"help": "images per fitting batch"})
    include_synonyms: bool = field(default=False, metadata={"help": "add each concept's synonyms to its targets"})
    multiscale: bool = field(default=True, metadata={"help": "pool tokens at 1/2/4/8x for means and covariances"})
    min_gate: float = field(default=1e-4, metadata={"help": "tokens whose gate is below this are left untouched"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if self.template is not None and self.template.count("{}") != 1:
            raise ConfigError(f"{WHERE}.template: must contain '{{}}' once, got {self.template!r}")
        counts = ("n_anchors", "n_mapping", "n_tokens", "update_rank", "degen_rank", "gate_rank", "seeds")
        check_at_least(self, WHERE, 1, (*counts, "sampling_steps", "batch_size"))
        check_at_least(self, WHERE, 0, ("thresh", "eta"), strict=True)
        for name in ("collect_from", "collect_until", "active_from"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{WHERE}.{name}: must be in [0, 1] (a fraction of the trajectory), got {value}")
        if None not in (self.collect_from, self.collect_until) and self.collect_from >= self.collect_until:
            raise ConfigError(
                f"{WHERE}.collect_until: must be > collect_from ({self.collect_from}), got {self.collect_until}"
            )
        if not 0 <= self.min_gate < 0.5:
            raise ConfigError(f"{WHERE}.min_gate: must be in [0, 0.5), got {self.min_gate}")
        if self.anchors is not None and not self.anchors:
            raise ConfigError(f"{WHERE}.anchors: must name at least one prompt (or be null for the preset)")
