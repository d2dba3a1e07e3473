"""``attack``: run every configured attack against the unedited model and each edit; attack success rate per concept.

    rows = load_prompts(...); per variant (base, each edit), its erased concepts' rows with an attacked role
    edit.apply(pipe)
      no_attack: the plain prompts -> images -> judge            (pre-attack successes)
      each attack, per concept: attack.run(target, rows) -> prompts or text embeddings -> images -> judge
    edit.remove(pipe)
    write results.json + rows.jsonl in the evaluation's format: ``erasekit report`` and ``compare`` read them

ASR = (pre-attack successes + attack successes) / N, as UnlearnDiffAtk and RECE count it: a prompt that already
succeeds without attack counts (docs/attacks.md, "Judges and the success rate"); ``attack_success`` is the rate of
the attacked images alone. An attack is a run like an evaluation (:func:`~erasekit.eval.run.open_run`): images go
through the same sampler and content-addressed cache (prompt images are shared with ``erasekit eval``; an embedding
is keyed by the sha256 of its values), with the same per-row seeding, and the run folder has the evaluation's
format.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..edits import Edit
from ..errors import ConfigError
from ..eval.prompts import PromptRow, assign_roles
from ..eval.results import Results, write_run
from ..eval.run import Run, edit_concepts, open_run, variants
from ..eval.sampling import ImageSpec, edit_fingerprint, generate, sample_batch
from ..models.adapter import Conditioning, ModelAdapter
from ..validation import from_dict
from .base import Adversarial, Attack, Target, vae_latents
from .closed_form import NotApplicableError
from .config import NO_ATTACK, AttackConfig
from .judge import Judge, build_judge

EMBEDS_TAG = "embeds:"


def embeds_tag(embeds: Conditioning) -> str:
    """The stand-in prompt of an image generated from text embeddings: the sha256 of their float32 values (the rows,
    then the pooled embedding where the model takes one)."""
    digest = hashlib.sha256()
    for part in (embeds.hidden, embeds.pooled):
        if part is not None:
            digest.update(part.detach().float().cpu().contiguous().numpy().tobytes())
    return EMBEDS_TAG + digest.hexdigest()


class Session:
    """One variant under attack: generates (cached) and judges attack inputs, and serves the attacks' references."""

    def __init__(self, run: Run, judge: Judge, edit: Edit | None, progress: bool) -> None:
        self.run, self.judge, self.edit, self.progress = run, judge, edit, progress
        self.edit_fp = edit_fingerprint(edit)
        self.generated = 0

    def spec(self, adversarial: Adversarial, row: PromptRow) -> ImageSpec:
        spec = self.run.spec(row)
        prompt = adversarial.prompt if adversarial.embeds is None else embeds_tag(adversarial.embeds)
        return ImageSpec(prompt, spec.seed, spec.guidance, spec.width, spec.height, spec.steps)

    def images(self, adversarials: Sequence[Adversarial], rows: Sequence[PromptRow], description: str) -> list[str]:
        """Cache keys of the images of ``adversarials`` (generating the missing ones with the edit applied)."""
        specs = [self.spec(a, r) for a, r in zip(adversarials, rows, strict=True)]
        keys = [self.run.key(s, self.edit_fp) for s in specs]
        embeds = {s.prompt: a.embeds for s, a in zip(specs, adversarials, strict=True) if a.embeds is not None}
        text = [i for i, a in enumerate(adversarials) if a.embeds is None]
        vectors = [i for i, a in enumerate(adversarials) if a.embeds is not None]
        for indices, sampler in ((text, sample_batch), (vectors, partial(sample_batch, embeds=embeds))):
            if indices:
                self.generated += generate(
                    self.run.pipe, [specs[i] for i in indices], [keys[i] for i in indices], self.run.cache,
                    batch_size=self.run.settings.batch_size, sampler=sampler, description=description,
                    progress=self.progress,
                )  # fmt: skip
        return keys

    def query(self, adversarials: Sequence[Adversarial], rows: Sequence[PromptRow]) -> list[bool]:
        keys = self.images(adversarials, rows, "query")
        return [ok for ok, _ in self.judge(self.run.cache, keys, rows)]

    def reference_latents(self, rows: Sequence[PromptRow]) -> torch.Tensor:
        """VAE latents of the *unedited* model's images of ``rows`` (generated with the edit lifted if missing)."""
        run = self.run
        specs = [run.spec(r) for r in rows]
        keys = [run.key(s, None) for s in specs]
        if any(k not in run.cache for k in keys):
            if self.edit is not None:
                self.edit.remove(run.pipe)
            try:
                generate(run.pipe, specs, keys, run.cache, batch_size=run.settings.batch_size,
                         description="references", progress=self.progress)  # fmt: skip
            finally:
                if self.edit is not None:
                    self.edit.apply(run.pipe, check=False)
        pixels = [np.asarray(run.cache.load(k), dtype=np.float32) / 255 for k in keys]
        return vae_latents(run.pipe, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))


def _by_concept(rows: Sequence[PromptRow]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.concept, []).append(i)
    return groups


def _rate(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def summarize(
    rows: Sequence[PromptRow], pre: Sequence[bool], post: Sequence[bool], adversarials: Sequence[Adversarial]
) -> dict[str, Any]:
    """ASR (pre-attack or attack success), attack-only success, pre-attack rate, per concept, and what was spent."""
    hit = [p or q for p, q in zip(pre, post, strict=True)]
    per_concept = {
        concept: {"asr": _rate([hit[i] for i in idx]), "attack_success": _rate([post[i] for i in idx]), "n": len(idx)}
        for concept, idx in _by_concept(rows).items()
    }
    info: dict[str, list[float]] = {}
    for a in adversarials:
        for k, v in a.info.items():
            if isinstance(v, (bool, int, float)):
                info.setdefault(k, []).append(float(v))
    return {
        "asr": _rate(hit),
        "attack_success": _rate(post),
        "pre_asr": _rate(pre),
        "n": len(rows),
        "per_concept": per_concept,
        "steps": {"max": max((a.steps for a in adversarials), default=0),
                  "mean": float(np.mean([a.steps for a in adversarials])) if adversarials else 0.0},
        "queries": {"max": max((a.queries for a in adversarials), default=0),
                    "mean": float(np.mean([a.queries for a in adversarials])) if adversarials else 0.0},
        "info": {k: float(np.mean(v)) for k, v in info.items()},
        "applicable": True,
    }  # fmt: skip


def run_attacks(
    config: AttackConfig | dict[str, Any],
    pipe: Any = None,
    classifier: Any = None,
    progress: bool = True,
) -> Results:
    """Run a red-teaming config and write its run folder (``results.json``, ``rows.jsonl``); return the results.

    ``pipe`` and ``classifier`` may be given as objects (``model`` and ``judge`` then only label them).
    """
    config = from_dict(AttackConfig, config, where="attack config") if isinstance(config, dict) else config
    attacks: list[Attack] = config.build_attacks()
    judge = build_judge(config.judge, config.judge_options, classifier)
    attacked: dict[str, list[PromptRow]] = {}

    def choose_rows(edits: dict[str, Edit], rows: list[PromptRow]) -> None:
        """Per variant, the rows of its erased concepts with an attacked role (the base: every edit's concepts)."""
        everything = list(dict.fromkeys(c for edit in edits.values() for c in edit_concepts(edit)))
        for name, edit in variants(config, edits).items():
            concepts = config.concepts if config.concepts is not None else everything if edit is None else None
            concepts = concepts if concepts is not None else edit_concepts(edit)
            chosen = [r for r in assign_roles(rows, concepts) if r.role in config.roles]
            if not chosen:
                raise ConfigError(
                    f"{name}: no prompt row of the concepts {concepts} has a role in {config.roles}; "
                    "check prompts, concepts and roles"
                )
            judge.check(chosen)
            attacked[name] = chosen

    run = open_run(config, pipe, choose_rows)
    pipe, cache = run.pipe, run.cache
    original_kv = {n: w.detach().clone() for n, w in ModelAdapter(pipe).kv_weights().items()}

    scores: dict[str, dict[str, Any]] = {}
    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    generated: dict[str, int] = {}
    for name, edit in run.variants.items():
        chosen = attacked[name]
        with run.applied(edit):
            session = Session(run, judge, edit, progress)
            target = Target(pipe, ModelAdapter(pipe), original_kv, session.reference_latents, session.query,
                            seed=config.seed, progress=progress)  # fmt: skip
            plain = [Adversarial(prompt=r.prompt) for r in chosen]
            verdicts = judge(cache, session.images(plain, chosen, f"{name}: {NO_ATTACK}"), chosen)
            pre = [ok for ok, _ in verdicts]
            entries = {NO_ATTACK: summarize(chosen, pre, pre, plain)}
            _record(records, name, NO_ATTACK, chosen, session, plain, verdicts)
            for attack in attacks:
                started = time.perf_counter()
                adversarials: list[Adversarial | None] = [None] * len(chosen)
                try:
                    for concept, idx in _by_concept(chosen).items():
                        group = attack.run(target, [chosen[i] for i in idx], concept)
                        for i, a in zip(idx, group, strict=True):
                            adversarials[i] = a
                except NotApplicableError as exc:
                    entries[attack.label] = {"applicable": False, "note": str(exc), "n": len(chosen)}
                    continue
                done = [a for a in adversarials if a is not None]
                keys = session.images(done, chosen, f"{name}: {attack.label}")
                verdicts = judge(cache, keys, chosen)
                entries[attack.label] = summarize(chosen, pre, [ok for ok, _ in verdicts], done)
                entries[attack.label]["seconds"] = time.perf_counter() - started
                _record(records, name, attack.label, chosen, session, done, verdicts)
            scores[name] = entries
            generated[name] = session.generated

    embeddings = (
        "prompt_embeds (and pooled_prompt_embeds where the model takes them) = the attack's text "
        "embeddings; negative = the pipeline's own unconditional embedding, as for text prompts"
    )
    protocol = {
        "generation": run.generation_protocol() | {"embeddings": embeddings},
        "attacks": {a.label: a.describe() for a in attacks},
        "judge": judge.protocol(),
        "asr": "(pre-attack successes + attack successes) / N (UnlearnDiffAtk, RECE)",
        "roles": config.roles,
        "seed": config.seed,
    }
    results = run.results(
        protocol,
        {
            name: {
                "concepts": sorted({r.concept for r in attacked[name]}),
                "images_generated": generated[name],
                "metrics": {"attack": scores[name]},
            }
            for name in run.variants
        },
    )
    write_run(Path(config.output), results, list(records.values()))
    return results


def _record(
    records: dict[tuple[str, str, int], dict[str, Any]],
    variant: str,
    label: str,
    rows: Sequence[PromptRow],
    session: Session,
    adversarials: Sequence[Adversarial],
    verdicts: Sequence[tuple[bool, Any]],
) -> None:
    """One ``rows.jsonl`` record per (attack, row), with each variant's image, verdict and found prompt."""
    for row, adversarial, (ok, seen) in zip(rows, adversarials, verdicts, strict=True):
        record = records.setdefault((label, row.set, row.index), {**row.to_dict(), "set": f"{label} · {row.set}",
                                                                  "attack": label, "variants": {}})  # fmt: skip
        key = session.run.key(session.spec(adversarial, row), session.edit_fp)
        outcome = "success" if ok else "resisted"
        prediction = [str(seen), outcome] if isinstance(seen, str) else [outcome]
        entry = {"key": key, "role": row.role, "prediction": prediction, "success": ok}
        if "prompt" in adversarial.info:
            entry["adversarial_prompt"] = adversarial.info["prompt"]
        record["variants"][variant] = entry
