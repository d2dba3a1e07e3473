"""GLoCE: Gated Low-rank adaptation for Concept Erasure (Lee et al., CVPR 2025, arXiv 2503.12356). Training-free.

For each erased concept (docs/methods/gloce.md, "How a fit runs"): its prompts' roles (``roles.py``), their token
statistics (``statistics.py``), the closed form per layer (``core.py``), then a gate calibration pass; every
concept's modules are stacked per layer, where each token takes the concept with the largest gate (``modules.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch

from ...concepts import ConceptSet, normalize
from ...edits import Edit
from ...errors import ConfigError
from ...models.adapter import ModelAdapter
from ...progress import progress_bar
from ..base import Method, register_method
from .config import PRESETS, WHERE, GLoCEConfig
from .core import GateBasis, calibrate, gate_directions, lowrank_update, pad_columns, top_eigenvectors
from .modules import KIND, LAYER_FIELDS
from .roles import Roles, resolve_roles
from .statistics import TokenMoments, by_prompt, run_partial


def _closed_form(moments: TokenMoments, roles: Roles) -> list[dict[str, torch.Tensor]]:
    """Per layer: ``A``, ``B``, ``mu_t``, ``mu_m``, ``G``, ``mu_n`` of one concept (float64)."""
    s = roles.settings
    target, mapping = moments(roles.target, roles.window), moments(roles.mapping, roles.window)
    layers = []
    for t, m, n in zip(target, mapping, moments([roles.centre], roles.window), strict=True):
        mu_t, cov_t, mu_n = t.mean(), t.covariance(), n.mean()
        A, B = lowrank_update(top_eigenvectors(cov_t, s.update_rank), top_eigenvectors(m.covariance(), s.degen_rank))
        G = gate_directions(cov_t, mu_t, mu_n, s.gate_rank)
        layers.append({"A": A, "B": B, "mu_t": mu_t, "mu_m": m.mean(), "G": G, "mu_n": mu_n})
    return layers


def _column(maxima: dict[str, list[list[torch.Tensor]]], prompts: list[str], layer: int, col: int) -> torch.Tensor:
    """One concept's (``col``) recorded score maxima at ``layer`` over every image and step of ``prompts``."""
    return torch.cat([torch.cat(maxima[p][layer])[:, col] for p in prompts])


@register_method
class GLoCE(Method):
    """Training-free gated low-rank modules on the cross-attention outputs, one per erased concept."""

    name = "gloce"
    config_class = GLoCEConfig
    presets = PRESETS

    def fit(self, model: ModelAdapter, concepts: ConceptSet) -> Edit:
        run = self.settings()  # what holds for every concept: the sampler of the fitting generations, min_gate
        roles = resolve_roles(model, concepts, self.settings)
        width = min(layer.to_out.out_features for layer in model.layers)
        for r in roles:
            if r.settings.update_rank >= width:
                raise ConfigError(
                    f"{WHERE}.update_rank: must be < {width} (the narrowest layer), got {r.settings.update_rank}"
                )
            model.tokenize([*r.target, *r.mapping, r.centre, *r.anchors])  # unencodable prompts fail before any work
        with progress_bar(run.progress) as bar:
            moments = TokenMoments(model, run)
            fitted = [_closed_form(moments, r) for r in bar.track(roles, description="GLoCE statistics")]
            moments.cache.clear()  # up to MOMENT_CACHE_BYTES
            calib = self._calibrate(model, run, roles, fitted, partial(bar.track, description="GLoCE gate calibration"))
        tensors, spec = self._stack(model, run, roles, fitted, calib)
        info = self._diagnostics(model, roles, calib)
        base = [f"{layer.name}.to_out.0.weight" for layer in model.layers]
        return Edit.from_modules(self.name, self.edit_config(run), concepts.to_dict(), model, kind=KIND,
                                 tensors=tensors, spec=spec, base_names=base, info=info)  # fmt: skip

    def _calibrate(self, model: ModelAdapter, run: GLoCEConfig, roles: list[Roles], fitted: list,
                   track: Callable[[list], Iterable]) -> list[list[dict[str, Any]]]:  # fmt: skip
        """Per concept and layer: ``c``, ``k`` and the anchor / target score maxima behind them."""
        out: list[list[dict[str, Any]]] = [[] for _ in roles]
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(roles):
            groups.setdefault(r.window, []).append(j)
        for window, members in groups.items():
            g_rank = max(roles[j].settings.gate_rank for j in members)
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
                for p, idx in by_prompt(rows).items():
                    maxima[p][index].append(scores[idx])

            run_partial(model, run, prompts, window, on_tokens, track)
            for col, j in enumerate(members):
                s = roles[j].settings
                for li in range(len(model.layers)):
                    anchors = _column(maxima, roles[j].anchors, li, col)
                    target = _column(maxima, roles[j].target, li, col)
                    c, k = calibrate(anchors, s.thresh, s.calibration)
                    out[j].append({"center": c, "slope": k, "anchors": anchors, "target": target})
        return out

    def _stack(self, model, run, roles, fitted, calib) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Stack every concept's modules per layer (ranks padded with zero columns) into the artifact's tensors."""
        settings = [r.settings for r in roles]
        rank = max(s.degen_rank for s in settings)
        widths = {"A": rank, "B": rank, "G": max(s.gate_rank for s in settings)}
        tensors = {}
        for li, layer in enumerate(model.layers):
            per = [f[li] for f in fitted]
            stacked = {
                k: torch.stack([pad_columns(p[k], widths[k]) if k in widths else p[k] for p in per]) for k in per[0]
            }
            stacked.update({k: torch.tensor([c[li][k] for c in calib]) for k in ("center", "slope")})
            tensors.update({f"{layer.name}/{f}": stacked[f].float() for f in LAYER_FIELDS})
        spec = {
            "layers": [layer.name for layer in model.layers], "concepts": [r.concept for r in roles],
            "eta": [float(s.eta) for s in settings], "active_from": [float(s.active_from) for s in settings],
            "num_train_timesteps": int(model.pipe.scheduler.config.num_train_timesteps), "min_gate": run.min_gate,
            "eps": 1e-6,
        }  # fmt: skip
        return tensors, spec

    def _diagnostics(self, model, roles: list[Roles], calib) -> dict[str, Any]:
        """Roles, per-kind settings and, per layer, the gate threshold against the anchor and target maxima (a gate
        shut for the concept's own prompts is the reference's known failure: docs/methods/gloce.md, "Choices")."""
        info: dict[str, Any] = {"concepts": {}, "warnings": []}
        for r, per_layer in zip(roles, calib, strict=True):
            layers = {
                layer.name: {
                    "center": cal["center"], "slope": cal["slope"], "anchor_max_mean": float(cal["anchors"].mean()),
                    "anchor_above_center": float((cal["anchors"] > cal["center"]).float().mean()),
                    "target_max_median": float(cal["target"].median()),
                    "target_above_center": float((cal["target"] > cal["center"]).float().mean()),
                }
                for layer, cal in zip(model.layers, per_layer, strict=True)
            }  # fmt: skip
            dead = [n for n, v in layers.items() if v["target_max_median"] <= v["center"]]
            if len(dead) == len(layers):
                info["warnings"].append(f"'{r.concept}': the gate stays shut for its own target prompts at every layer")
            info["concepts"][r.concept] = {
                "target": r.target, "mapping": r.mapping, "centre": r.centre, "anchors": r.anchors,
                "settings": {name: getattr(r.settings, name) for name in PRESETS["object"]}, "layers": layers,
            }  # fmt: skip
        for message in info["warnings"]:
            warnings.warn(f"gloce: {message} (see the edit's info; lower thresh or check the prompts)", stacklevel=3)
        return info


def merge_edits(edits: Sequence[Edit]) -> Edit:
    """One GLoCE edit holding the modules of several, fitted separately on the same model.

    The reference fits every concept in its own run and stacks the checkpoints at load time; this is that stacking,
    for edits fitted in parallel or at different times (docs/methods/gloce.md, "Mass erasure from separate fits").
    Ranks are padded with zero columns; each concept keeps its own gate, eta and activation window, and every token
    takes the concept with the largest gate.
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
