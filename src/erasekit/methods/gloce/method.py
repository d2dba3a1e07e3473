"""GLoCE: Gated Low-rank adaptation for Concept Erasure (Lee et al., CVPR 2025, arXiv 2503.12356). Training-free.

For each erased concept (note dumo_gloce.md part 2):

1. Roles (2.3): *target* prompts (the concept in its kind's template), *mapping* prompts (the distribution the
   concept is replaced by: the least similar preserved concepts for celebrities and objects, the gate centre for
   styles and explicit content, or the concept's ``guide``), the *gate centre* (a generic concept of the same kind)
   and *anchors* (the most similar preserved concepts: the gate must stay shut for them).
2. Statistics (2.4): a few partial generations per prompt and seed with the frozen model; hooks on every
   cross-attention output record the conditional half's image embeddings inside a window of the trajectory. Means
   and covariances use multi-scale pooled tokens.
3. Closed form (2.5, 2.6): per layer, the low-rank map and the gate directions (``core.py``).
4. Calibration (2.6): a second pass records, per anchor (prompt, seed, step), the largest gate score over tokens;
   the gate threshold sits ``thresh`` standard deviations above their mean.

All concepts' modules are stacked per layer; at inference each token takes the concept with the largest gate (2.8).
Windows are fractions of the trajectory (``progress = 1 - t / T``), so fitting and inference may use any sampler.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from rich.progress import track

from ...concepts import Concept, ConceptSet, normalize
from ...edits import Edit
from ...errors import ConfigError
from ...models.adapter import ModelAdapter
from ...validation import check_at_least, to_dict
from ..base import Method, register_method
from .core import (
    Calibration,
    GateBasis,
    Moments,
    calibrate,
    gate_directions,
    lowrank_update,
    pad_columns,
    pooled_tokens,
    top_eigenvectors,
)
from .modules import KIND, LAYER_FIELDS

MappingRule = Literal["dissimilar", "centre"]

# Per-kind presets (note 2.9). Celebrities, styles and explicit follow the reference scripts; objects are ours
# (celebrity settings with other objects as mapping, note 2.9 last paragraph). ``template`` takes concept words (the
# target, a guide, preserved concepts); ``centre`` and ``anchors`` are whole prompts. Gate centres follow the
# reference ("A face of a celebrity" -> "a photo of a person": words every SD-style model knows).
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
MOMENT_CACHE = 16
"""Prompts whose token moments are kept between concepts (the gate centre, shared mapping prompts). At SD1.5 size
one prompt's moments are ~100 MB (16 d x d float64 matrices), hence a bound."""


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
    steps: int = field(default=50, metadata={"help": "sampler steps of the fitting generations"})
    guidance: float = field(default=7.5, metadata={"help": "guidance scale of the fitting generations"})
    size: int | None = field(default=None, metadata={"help": "image side of the fitting generations; None = model's"})
    batch_size: int = field(default=16, metadata={"help": "images per fitting batch"})
    include_synonyms: bool = field(default=False, metadata={"help": "add each concept's synonyms to its targets"})
    multiscale: bool = field(default=True, metadata={"help": "pool tokens at 1/2/4/8x for means and covariances"})
    min_gate: float = field(default=1e-4, metadata={"help": "tokens whose gate is below this are left untouched"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"gloce params.{message}")

        if self.template is not None and self.template.count("{}") != 1:
            raise bad(f"template must contain '{{}}' once, got {self.template!r}")
        check_at_least(
            self,
            "gloce params",
            1,
            (
                "n_anchors",
                "n_mapping",
                "n_tokens",
                "update_rank",
                "degen_rank",
                "gate_rank",
                "seeds",
                "steps",
                "batch_size",
            ),
        )
        check_at_least(self, "gloce params", 0, ("thresh",), strict=True)
        for name in ("collect_from", "collect_until", "active_from"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise bad(f"{name} must be in [0, 1] (a fraction of the trajectory), got {value}")
        if None not in (self.collect_from, self.collect_until) and self.collect_from >= self.collect_until:
            raise bad(f"collect_from ({self.collect_from}) must be < collect_until ({self.collect_until})")
        check_at_least(self, "gloce params", 0, ("eta",), strict=True)
        if not 0 <= self.min_gate < 0.5:
            raise bad(f"min_gate must be in [0, 0.5), got {self.min_gate}")
        if self.anchors is not None and not self.anchors:
            raise bad("anchors must name at least one concept (or be null for the preset)")


@dataclass
class Roles:
    """The prompts of one concept's four roles (note 2.3) and its resolved hyper-parameters."""

    concept: str
    target: list[str]
    mapping: list[str]
    centre: str
    anchors: list[str]
    settings: dict[str, Any]

    @property
    def window(self) -> tuple[float, float, int]:
        s = self.settings
        return s["collect_from"], s["collect_until"], s["seeds"]


def resolve_settings(cfg: GLoCEConfig, concept: Concept) -> dict[str, Any]:
    """The preset of the concept's kind with every field the config sets overriding it."""
    preset = dict(PRESETS[concept.kind])
    for name in preset:
        if getattr(cfg, name) is not None:
            preset[name] = getattr(cfg, name)
    if preset["collect_from"] >= preset["collect_until"]:
        raise ConfigError(
            f"gloce params: collection window [{preset['collect_from']}, {preset['collect_until']}) is empty"
        )
    return preset


class TextSimilarity:
    """Prompt similarity of note 2.3: mean over token positions 1..n of the cosine between text embeddings.

    Each distinct prompt is encoded once (only its first ``1 + n`` positions: the encoder is causal), however many
    concepts compare against it: at 100 concepts with 100 candidates that is 200 encodings, not 10,000.
    """

    def __init__(self, model: ModelAdapter, n_tokens: int) -> None:
        self.model, self.n_tokens = model, n_tokens
        self.cache: dict[str, torch.Tensor] = {}

    def prefetch(self, texts: Sequence[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            emb = self.model.encode(missing, positions=1 + self.n_tokens)[:, 1:]
            self.cache.update(zip(missing, torch.nn.functional.normalize(emb, dim=-1), strict=True))

    def __call__(self, query: str, candidates: Sequence[str]) -> torch.Tensor:
        self.prefetch([query, *candidates])
        emb = torch.stack([self.cache[c] for c in candidates])
        return (emb * self.cache[query]).sum(-1).mean(-1)


def _ranked(similarity: TextSimilarity, fmt: Callable[[str], str], text: str, pool: list[str]) -> list[str]:
    """``pool`` from the most to the least similar to ``text`` (both put in the template)."""
    if not pool:
        return []
    sims = similarity(fmt(text), [fmt(p) for p in pool])
    return [pool[i] for i in torch.argsort(sims, descending=True, stable=True).tolist()]


def resolve_roles(model: ModelAdapter, concepts: ConceptSet, cfg: GLoCEConfig) -> list[Roles]:
    """Target, mapping, gate-centre and anchor prompts of every concept (note 2.3).

    The candidates are the preserved texts (the reference ranks a fixed list of 497 celebrities or 1,734 artists).
    Without any, and with ``anchors_from_erased``, a concept's anchors are the most similar *other erased* concepts of
    its kind: they must not open this concept's gate (their own modules erase them), which keeps each gate specific
    to its concept in mass erasure. Mapping never uses erased concepts.
    """
    settings = [resolve_settings(cfg, c) for c in concepts]
    similarity = TextSimilarity(model, cfg.n_tokens)
    pools, anchor_pools = [], []
    for c in concepts:
        pool = [p for p in dict.fromkeys([*concepts.preserve, *c.preserve]) if normalize(c.text) not in normalize(p)]
        others = [o.text for o in concepts if o is not c and o.kind == c.kind] if cfg.anchors_from_erased else []
        pools.append(pool)
        anchor_pools.append(pool or others)
    similarity.prefetch([s["template"].format(t) for s, c, pool in zip(settings, concepts, anchor_pools, strict=True)
                         for t in ([c.text, *pool] if pool else [])])  # fmt: skip
    roles = []
    for concept, s, pool, anchor_pool in zip(concepts, settings, pools, anchor_pools, strict=True):
        fmt = s["template"].format
        target = [fmt(concept.text), *(fmt(x) for x in concept.synonyms if cfg.include_synonyms)]
        ranked = _ranked(similarity, fmt, concept.text, pool)
        if concept.guide is not None:
            mapping = [fmt(concept.guide)]
        elif s["mapping"] == "dissimilar" and ranked:
            mapping = [fmt(p) for p in ranked[::-1][: cfg.n_mapping]]
        else:
            mapping = [s["centre"]]
        near = ranked if pool else _ranked(similarity, fmt, concept.text, anchor_pool)
        anchors = list(s["anchors"] or [fmt(p) for p in near[: cfg.n_anchors]] or [s["centre"]])
        roles.append(Roles(concept.text, target, mapping, s["centre"], anchors, s))
    return roles


class _Recorder:
    """Hooks that hand the conditional half of every cross-attention output inside a trajectory window to a callback.

    ``rows`` names the prompt of each image in the running batch; ``on_tokens(layer_index, rows, x)`` receives
    ``x`` ``[R, T, d]``. Only the conditional half of the classifier-free-guidance batch is used (note 2.14.3).
    """

    def __init__(self, model: ModelAdapter, start: float, end: float, on_tokens: Callable) -> None:
        self.rows: list[str] = []
        self.recording = False
        T = model.pipe.scheduler.config.num_train_timesteps
        self.progress = lambda t: 1.0 - float(torch.as_tensor(t).flatten()[0]) / T
        self.start, self.end = start, end

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


def run_partial(model: ModelAdapter, cfg: GLoCEConfig, prompts: Sequence[str], seeds: int, window: tuple,
                on_tokens: Callable, desc: str | None = None) -> None:  # fmt: skip
    """Partial generations of every prompt with seeds ``0..seeds-1``, recording inside ``window``.

    ``desc`` shows a progress bar over the batches (only one bar may be live at a time: callers inside another
    progress loop pass ``None``).
    """
    jobs = [(p, s) for p in prompts for s in range(seeds)]
    chunks = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    recorder = _Recorder(model, window[0], window[1], on_tokens)
    try:
        for chunk in track(chunks, description=desc or "", disable=desc is None or not cfg.progress):
            recorder.rows = [p for p, _ in chunk]
            model.pipe(
                recorder.rows,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance,
                height=cfg.size,
                width=cfg.size,
                generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                output_type="latent",
                callback_on_step_end=recorder.stop_after_window,
            )
    finally:
        recorder.close()


def _by_prompt(rows: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(rows):
        groups.setdefault(p, []).append(i)
    return groups


def _column(maxima: dict[str, list[list[torch.Tensor]]], prompts: list[str], layer: int, col: int) -> torch.Tensor:
    """One concept's (``col``) recorded score maxima at ``layer`` over every image and step of ``prompts``."""
    return torch.cat([torch.cat(maxima[p][layer])[:, col] for p in prompts])


@register_method
class GLoCE(Method):
    """Training-free gated low-rank modules on the cross-attention outputs, one per erased concept."""

    name = "gloce"
    config_class = GLoCEConfig

    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        cfg = self.config
        roles = resolve_roles(model, concepts, cfg)
        width = min(layer.to_out.out_features for layer in model.layers)
        for r in roles:
            if r.settings["update_rank"] >= width:
                raise ConfigError(f"gloce params.update_rank ({r.settings['update_rank']}) must be < {width}")
            model.tokenize([*r.target, *r.mapping, r.centre, *r.anchors])  # unencodable prompts fail before any work
        self._cache: OrderedDict[tuple, list[Moments]] = OrderedDict()
        try:
            steps = track(roles, "GLoCE statistics", disable=not cfg.progress)
            fitted = [self._closed_form(model, r) for r in steps]
        finally:
            self._cache.clear()  # up to MOMENT_CACHE x ~100 MB at SD1.5 size
        calib = self._calibrate(model, roles, fitted)
        tensors, spec = self._stack(model, roles, fitted, calib)
        info = self._diagnostics(model, roles, calib)
        base = [f"{layer.name}.to_out.0.weight" for layer in model.layers]
        return Edit.from_modules(self.name, to_dict(cfg), concepts.to_dict(), model, kind=KIND, tensors=tensors,
                                 spec=spec, base_names=base, info=info)  # fmt: skip

    # ---------------------------------------------------------------- statistics and closed form (2.4, 2.5)
    def _moments(self, model: ModelAdapter, prompts: list[str], window: tuple) -> list[Moments]:
        """Token moments per layer, summed over ``prompts`` (each prompt generated once, then cached)."""
        missing = [p for p in dict.fromkeys(prompts) if (p, window) not in self._cache]
        if missing:
            fresh = {p: [Moments(layer.to_out.out_features) for layer in model.layers] for p in missing}
            scales = (1, 2, 4, 8) if self.config.multiscale else (1,)

            def on_tokens(index: int, rows: list[str], x: torch.Tensor) -> None:
                for p, idx in _by_prompt(rows).items():
                    fresh[p][index].add(pooled_tokens(x[idx], scales))

            run_partial(model, self.config, missing, window[2], window[:2], on_tokens)
            for p in missing:
                self._cache[(p, window)] = fresh[p]
                if len(self._cache) > MOMENT_CACHE:
                    self._cache.popitem(last=False)
        per_prompt = [self._cache[(p, window)] for p in prompts]
        for p in prompts:
            self._cache.move_to_end((p, window))
        merged = per_prompt[0]
        for other in per_prompt[1:]:
            merged = [a.merged(b) for a, b in zip(merged, other, strict=True)]
        return merged

    def _closed_form(self, model: ModelAdapter, roles: Roles) -> list[dict[str, torch.Tensor]]:
        """Per layer: ``A``, ``B``, ``mu_t``, ``mu_m``, ``G``, ``mu_n`` of one concept (float64)."""
        s = roles.settings
        target = self._moments(model, roles.target, roles.window)
        mapping = self._moments(model, roles.mapping, roles.window)
        centre = self._moments(model, [roles.centre], roles.window)
        layers = []
        for t, m, n in zip(target, mapping, centre, strict=True):
            mu_t, cov_t, mu_n = t.mean(), t.covariance(), n.mean()
            A, B = lowrank_update(
                top_eigenvectors(cov_t, s["update_rank"]), top_eigenvectors(m.covariance(), s["degen_rank"])
            )
            G = gate_directions(cov_t, mu_t, mu_n, s["gate_rank"])
            layers.append({"A": A, "B": B, "mu_t": mu_t, "mu_m": m.mean(), "G": G, "mu_n": mu_n})
        return layers

    # ------------------------------------------------------------------------------- calibration (2.6)
    def _calibrate(self, model, roles: list[Roles], fitted) -> list[list[dict[str, Any]]]:
        """Per concept and layer: ``c``, ``k`` and the anchor / target score maxima behind them."""
        out: list[list[dict[str, Any]]] = [[] for _ in roles]
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(roles):
            groups.setdefault(r.window, []).append(j)
        for window, members in groups.items():
            g_rank = max(roles[j].settings["gate_rank"] for j in members)
            bases = [
                GateBasis(
                    torch.stack([pad_columns(fitted[j][li]["G"], g_rank) for j in members]),
                    torch.stack([fitted[j][li]["mu_n"] for j in members]),
                ).to(model.device)
                for li in range(len(model.layers))
            ]
            prompts = list(dict.fromkeys(p for j in members for p in [*roles[j].anchors, *roles[j].target]))
            maxima: dict[str, list[list[torch.Tensor]]] = {p: [[] for _ in model.layers] for p in prompts}

            def on_tokens(index: int, rows: list[str], x: torch.Tensor, bases=bases, maxima=maxima) -> None:
                r, t, d = x.shape
                scores = bases[index].scores(x.reshape(-1, d)).view(r, t, -1).amax(1).cpu()
                for p, idx in _by_prompt(rows).items():
                    maxima[p][index].append(scores[idx])

            run_partial(model, self.config, prompts, window[2], window[:2], on_tokens, "GLoCE gate calibration")
            for col, j in enumerate(members):
                s = roles[j].settings
                for li in range(len(model.layers)):
                    anchors = _column(maxima, roles[j].anchors, li, col)
                    target = _column(maxima, roles[j].target, li, col)
                    c, k = calibrate(anchors, s["thresh"], self.config.calibration)
                    out[j].append({"center": c, "slope": k, "anchors": anchors, "target": target})
        return out

    # ----------------------------------------------------------------------------- packaging (2.8, 2.11)
    def _stack(self, model, roles, fitted, calib) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Stack every concept's modules per layer (ranks padded with zero columns) into the artifact's tensors."""
        rank = max(r.settings["degen_rank"] for r in roles)
        g_rank = max(r.settings["gate_rank"] for r in roles)
        tensors = {}
        for li, layer in enumerate(model.layers):
            per = [fitted[j][li] for j in range(len(roles))]
            stacked = {
                "A": torch.stack([pad_columns(p["A"], rank) for p in per]),
                "B": torch.stack([pad_columns(p["B"], rank) for p in per]),
                "mu_t": torch.stack([p["mu_t"] for p in per]),
                "mu_m": torch.stack([p["mu_m"] for p in per]),
                "G": torch.stack([pad_columns(p["G"], g_rank) for p in per]),
                "mu_n": torch.stack([p["mu_n"] for p in per]),
                "center": torch.tensor([calib[j][li]["center"] for j in range(len(roles))]),
                "slope": torch.tensor([calib[j][li]["slope"] for j in range(len(roles))]),
            }
            tensors.update({f"{layer.name}/{f}": stacked[f].float() for f in LAYER_FIELDS})
        spec = {
            "layers": [layer.name for layer in model.layers],
            "concepts": [r.concept for r in roles],
            "eta": [float(r.settings["eta"]) for r in roles],
            "active_from": [float(r.settings["active_from"]) for r in roles],
            "num_train_timesteps": int(model.pipe.scheduler.config.num_train_timesteps),
            "min_gate": self.config.min_gate,
            "eps": 1e-6,
        }
        return tensors, spec

    def _diagnostics(self, model, roles: list[Roles], calib) -> dict[str, Any]:
        """Roles and, per layer, the gate threshold against the anchor and target maxima (note 2.14.6)."""
        info: dict[str, Any] = {"concepts": {}, "warnings": []}
        for r, per_layer in zip(roles, calib, strict=True):
            layers = {}
            for layer, cal in zip(model.layers, per_layer, strict=True):
                target_median = float(cal["target"].median())
                layers[layer.name] = {
                    "center": cal["center"],
                    "slope": cal["slope"],
                    "anchor_max_mean": float(cal["anchors"].mean()),
                    "anchor_above_center": float((cal["anchors"] > cal["center"]).float().mean()),
                    "target_max_median": target_median,
                    "target_above_center": float((cal["target"] > cal["center"]).float().mean()),
                }
            dead = [n for n, v in layers.items() if v["target_max_median"] <= v["center"]]
            if len(dead) == len(layers):
                info["warnings"].append(f"'{r.concept}': the gate stays shut for its own target prompts at every layer")
            info["concepts"][r.concept] = {
                "target": r.target, "mapping": r.mapping, "centre": r.centre, "anchors": r.anchors,
                "settings": r.settings, "layers": layers,
            }  # fmt: skip
        for message in info["warnings"]:
            warnings.warn(f"gloce: {message} (see the edit's info; lower thresh or check the prompts)", stacklevel=3)
        return info


def merge_edits(edits: Sequence[Edit]) -> Edit:
    """One GLoCE edit holding the modules of several, fitted separately on the same model (note 2.8).

    The reference fits every concept in its own run and stacks the checkpoints at load time; this is that stacking,
    for edits fitted in parallel or at different times. Ranks are padded with zero columns; each concept keeps its own
    gate, eta and activation window, and every token takes the concept with the largest gate.
    """
    if not edits:
        raise ConfigError("merge_edits needs at least one GLoCE edit")
    first = edits[0]
    for edit in edits:
        if edit.module_kind != KIND:
            raise ConfigError(f"merge_edits merges GLoCE edits; got a '{edit.method}' edit")
        if edit.base_fingerprint != first.base_fingerprint or edit.module_spec["layers"] != first.module_spec["layers"]:
            raise ConfigError("merge_edits: the edits were fitted on different base models")
    names = [c for e in edits for c in e.module_spec["concepts"]]
    if len(set(map(normalize, names))) != len(names):
        raise ConfigError("merge_edits: a concept appears in more than one edit")
    tensors = {}
    for layer in first.module_spec["layers"]:
        for f in LAYER_FIELDS:
            parts = [e.modules[f"{layer}/{f}"] for e in edits]
            if parts[0].dim() == 3:
                width = max(p.shape[-1] for p in parts)
                parts = [pad_columns(p, width) for p in parts]
            tensors[f"{layer}/{f}"] = torch.cat(parts)
    spec = dict(first.module_spec)
    for key in ("concepts", "eta", "active_from"):
        spec[key] = [v for e in edits for v in e.module_spec[key]]
    concepts = {
        "concepts": [c for e in edits for c in e.concepts["concepts"]],
        "preserve": list(dict.fromkeys(p for e in edits for p in e.concepts.get("preserve", []))),
    }
    info = {
        "concepts": {k: v for e in edits for k, v in e.info.get("concepts", {}).items()},
        "warnings": [w for e in edits for w in e.info.get("warnings", [])],
        "merged_from": len(edits),
    }
    return Edit(GLoCE.name, {"merged": [e.config for e in edits]}, concepts, {}, first.base_fingerprint, info=info,
                modules=tensors, module_kind=KIND, module_spec=spec, base_names=list(first.base_names))  # fmt: skip
