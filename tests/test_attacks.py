"""Red-teaming attacks: the closed form solves its normal equations, attacks are deterministic for a seed and never
exceed their budgets, every attack runs on SD1.x, SD2.x (v-prediction) and SDXL (two encoders, pooled embedding), and
``erasekit attack`` writes results that ``erasekit report`` renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from erasekit import erase
from erasekit.attacks import Adversarial, AttackConfig, Target, build_attack, run_attacks
from erasekit.attacks.base import Budget, embedding_tables, encode_ids, noisy_batch, seeded, splice_ids
from erasekit.attacks.closed_form import NotApplicableError, adversarial_map, effective_kv
from erasekit.attacks.ringabell import concept_vector, read_pairs, remove_concept
from erasekit.attacks.token_search import query_schedule
from erasekit.cli import app
from erasekit.edits import Edit
from erasekit.errors import ConfigError
from erasekit.eval.prompts import PromptRow
from erasekit.eval.results import load_run
from erasekit.eval.sampling import (
    ImageSpec,
    edit_fingerprint,
    image_key,
    image_spec,
    pipeline_fingerprint,
    sample_batch,
)
from erasekit.methods.rece import derive_embedding, original_gram
from erasekit.models import ModelAdapter
from erasekit.report import render

ROWS = [
    PromptRow("a photo of a dog", seed=s, concept="dog", role="erase", family="object", label="dog") for s in (0, 1)
]


TINY_ATTACKS = {
    "closed_form": {},
    "ringabell": {"eta": 1.0},
    "inversion": {"steps": 2, "references": 2, "batch_size": 2},
    "token_search": {"steps": 2, "queries": 1, "candidates": 2, "top_k": 4, "prefix": 2, "timesteps": 1},
}
"""Every attack with budgets small enough for the tiny pipelines."""


def _random_kv(n_layers: int = 3, out: int = 12, d: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.to_k.weight": torch.randn(out, d, generator=g, dtype=torch.float64) for i in range(n_layers)}


def test_closed_form_solution_satisfies_its_normal_equations():
    W, W_edit = _random_kv(seed=0), _random_kv(seed=1)
    lam = 0.3
    c = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c_adv = c @ adversarial_map(W, W_edit, lam)
    # (lam I + sum W'^T W') c' = sum W'^T W c, for every row
    lhs = (lam * torch.eye(8, dtype=torch.float64) + sum(w.T @ w for w in W_edit.values())) @ c_adv.T
    rhs = sum(W_edit[n].T @ W[n] for n in W) @ c.T
    assert torch.allclose(lhs, rhs, atol=1e-10)
    # ... i.e. the gradient of sum ||W' c' - W c||^2 + lam ||c'||^2 vanishes at c'
    x = c_adv.clone().requires_grad_(True)
    objective = sum(((x @ W_edit[n].T - c @ W[n].T) ** 2).sum() for n in W) + lam * (x**2).sum()
    (grad,) = torch.autograd.grad(objective, [x])
    assert grad.abs().max() < 1e-9


def test_closed_form_equals_reces_derivation_on_shared_transform_edits():
    W = _random_kv(seed=0)
    T = torch.eye(8, dtype=torch.float64) + 0.2 * torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    c = torch.randn(4, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = c @ adversarial_map(W, {n: w @ T for n, w in W.items()}, 0.1)
    assert torch.allclose(ours, derive_embedding(c, T, original_gram(W), 0.1), atol=1e-10)


def test_effective_kv_reads_replaced_weights_and_linear_modules_and_refuses_nonlinear_ones(tiny_model):
    weights = {n: w.detach().clone() for n, w in tiny_model.kv_weights().items()}
    assert all(torch.allclose(effective_kv(tiny_model)[n], w, atol=1e-6) for n, w in weights.items())
    layer = tiny_model.layers[0]
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, tiny_model.embedding_dim, generator=g), torch.randn(layer.to_k.out_features, 2, generator=g)
    handle = layer.to_k.register_forward_hook(lambda _m, inputs, out: out + inputs[0] @ A.T @ B.T)  # a LoRA-like module
    try:
        assert torch.allclose(effective_kv(tiny_model)[layer.key_weight], weights[layer.key_weight] + B @ A, atol=1e-5)
    finally:
        handle.remove()
    handle = layer.to_v.register_forward_hook(lambda _m, _inputs, out: torch.tanh(out))  # a gated, nonlinear module
    try:
        with pytest.raises(NotApplicableError, match="not linear"):
            effective_kv(tiny_model)
    finally:
        handle.remove()


def test_closed_form_reports_edits_that_leave_keys_and_values_alone(tiny_model):
    original = {n: w.detach().clone() for n, w in tiny_model.kv_weights().items()}
    layer = tiny_model.layers[0]
    handle = layer.to_out.register_forward_hook(lambda _m, _inputs, out: 0.5 * out)  # a GLoCE-like output module
    try:
        target = Target(None, tiny_model, original, reference_latents=None, query=None)
        (adv,) = build_attack("closed_form", {}).run(target, ROWS[:1], "dog")
    finally:
        handle.remove()
    assert adv.info["kv_edited"] is False


def test_closed_form_restores_the_unedited_keys_and_values_on_a_uce_edit(tiny_pipe):
    model = ModelAdapter(tiny_pipe)
    original = {n: w.detach().clone() for n, w in model.kv_weights().items()}
    edit = erase(tiny_pipe, [{"text": "dog", "kind": "object"}], method="uce")
    edit.apply(tiny_pipe)
    target = Target(tiny_pipe, model, original, reference_latents=None, query=None)
    (adv,) = build_attack("closed_form", {"lambda_reg": 1e-6}).run(target, ROWS[:1], "dog")
    c = model.encode([ROWS[0].prompt])[0]
    for name, w in model.kv_weights().items():
        wanted, plain, attacked = c @ original[name].T, c @ w.detach().T, adv.embeds.hidden[0] @ w.detach().T
        assert (attacked - wanted).norm() < 1e-3 * (plain - wanted).norm()
    assert adv.info["kv_edited"] is True
    edit.remove(tiny_pipe)


def test_spliced_prompts_encode_exactly_as_the_pipeline_does(tiny_model):
    prompt = "a photo of a dog in the snow"
    original = tiny_model.tokenize([prompt])[0].tolist()
    spliced, slots = splice_ids(tiny_model, prompt, "dog", 1)
    ids = spliced[0].tolist()
    assert slots == [5] and ids[5] == tiny_model.tokenizer.eos_token_id  # the slot does not carry the concept's id
    assert ids[:5] + ids[6:] == original[:5] + original[6:]
    plain = encode_ids(tiny_model, torch.tensor([[original]])).hidden
    assert torch.allclose(plain[0], tiny_model.encode([prompt])[0], atol=1e-6)
    table = tiny_model.text_encoder.get_input_embeddings().weight.detach()
    same = encode_ids(tiny_model, spliced[None], [slots], [table[original[5]][None, None]]).hidden
    assert torch.equal(same, plain)  # the concept's own embedding in the slot gives the prompt's encoding back
    prefixed, prefix_slots = splice_ids(tiny_model, prompt, None, 3)
    assert prefix_slots == [1, 2, 3] and prefixed[0, 4:12].tolist() == original[1:9]


def test_generation_from_embeddings_matches_generation_from_the_prompt(tiny_pipe):
    spec = ImageSpec("a photo of a dog", 3, 5.0, 16, 16, 2)
    embeds = {"tag": ModelAdapter(tiny_pipe).conditioning([spec.prompt])}
    from_text = sample_batch(tiny_pipe, [spec])[0]
    from_embeds = sample_batch(tiny_pipe, [ImageSpec("tag", 3, 5.0, 16, 16, 2)], embeds=embeds)[0]
    assert from_text.tobytes() == from_embeds.tobytes()


def test_ringabell_adds_eta_times_the_mean_pair_difference(tiny_model):
    assert remove_concept("a photo of a Shirtless person", "shirtless") == "a photo of a person"
    assert remove_concept("a photo of a car", "dog") is None
    assert len(read_pairs("ringabell_nudity")) == 79 and len(read_pairs("ringabell_vangogh")) == 50
    target = Target(None, tiny_model, {}, reference_latents=None, query=None)
    advs = build_attack("ringabell", {"eta": 2.0}).run(target, ROWS, "dog")
    vector = concept_vector(tiny_model, [("a photo of a dog", "a photo of a")])
    assert torch.allclose(advs[0].embeds.hidden[0], tiny_model.encode([ROWS[0].prompt])[0] + 2.0 * vector, atol=1e-6)
    assert advs[0].steps == advs[0].queries == 0


class FakeTarget:
    """A Target on the tiny pipeline whose references are seeded noise latents and whose judge counts its calls."""

    def __init__(self, pipe, seed: int = 0, verdict: bool = False) -> None:
        self.queries, self.verdict = 0, verdict
        adapter = ModelAdapter(pipe)
        self.target = Target(pipe, adapter, {}, self.references, self.query, seed=seed)

    @staticmethod
    def references(rows) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(r.seed for r in rows))
        return torch.randn(len(rows), 4, 8, 8, generator=g)

    def query(self, adversarials, rows) -> list[bool]:
        self.queries += len(adversarials)
        return [self.verdict] * len(adversarials)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("inversion", {"steps": 3, "references": 2, "batch_size": 2}),
        ("token_search", {"steps": 4, "queries": 2, "candidates": 4, "top_k": 8, "prefix": 2, "timesteps": 1}),
    ],
)
def test_gradient_attacks_are_deterministic_for_a_seed_and_respect_their_budget(tiny_pipe, kind, options):
    rows = ROWS if kind == "inversion" else ROWS[:1]  # inversion shares its word across rows; search is per row

    def run(seed: int) -> tuple[list[Adversarial], int]:
        fake = FakeTarget(tiny_pipe, seed)
        return build_attack(kind, options).run(fake.target, rows, "dog"), fake.queries

    first, queries = run(0)
    again, _ = run(0)
    other, _ = run(1)
    assert all(torch.equal(a.embeds.hidden, b.embeds.hidden) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a.embeds.hidden, b.embeds.hidden) for a, b in zip(first, other, strict=True))
    assert all(a.steps == options["steps"] for a in first)  # the judge never says yes: the whole budget is spent
    assert all(a.queries == options.get("queries", 0) for a in first)
    assert queries == len(rows) * options.get("queries", 0)
    assert all(not p.requires_grad or p.grad is None for p in tiny_pipe.unet.parameters())  # model left untouched


def test_token_search_stops_at_its_first_successful_query(tiny_pipe):
    fake = FakeTarget(tiny_pipe, verdict=True)
    options = {"steps": 6, "queries": 3, "candidates": 2, "top_k": 4, "prefix": 2, "timesteps": 1}
    (adv,) = build_attack("token_search", options).run(fake.target, ROWS[:1], "dog")
    assert adv.success and adv.queries == fake.queries == 1 and adv.steps == min(query_schedule(6, 3)) == 2
    assert adv.info["prompt"].endswith("a photo of a dog") and "dog" not in adv.info["prompt"].split()[:2]


def test_query_schedule_spreads_the_budget_and_ends_at_the_last_step():
    assert query_schedule(20, 4) == {5, 10, 15, 20}
    assert query_schedule(3, 10) == {1, 2, 3}
    assert query_schedule(5, 0) == set()


def test_budget_refuses_to_go_over():
    budget = Budget(steps=2, queries=1)
    assert [budget.step() for _ in range(4)] == [True, True, False, False]
    assert [budget.query() for _ in range(3)] == [True, False, False] and (budget.steps, budget.queries) == (2, 1)


def test_inversion_lowers_the_denoising_loss(tiny_pipe):
    attack = build_attack("inversion", {"steps": 15, "lr": 0.05, "references": 2, "batch_size": 2})
    _, info = attack.learn(FakeTarget(tiny_pipe).target, ROWS, "dog")
    assert info["loss_end"] < info["loss_start"]


def test_attack_config_is_validated_up_front():
    with pytest.raises(ConfigError, match="unknown attack type 'ringbell'"):
        AttackConfig(model="m", prompts=["p.csv"], attacks={"ringbell": {}})
    with pytest.raises(ConfigError, match=r"attacks.token_search.*unknown field 'step'"):
        AttackConfig(model="m", prompts=["p.csv"], attacks={"token_search": {"step": 3}})
    with pytest.raises(ConfigError, match="roles"):
        AttackConfig(model="m", prompts=["p.csv"], roles=["retain"])


@pytest.fixture
def attack_run(tiny_path, tmp_path) -> Path:
    prompts = tmp_path / "prompts.csv"
    lines = ["prompt,seed,concept,role,family,label"]
    lines += [f"a photo of a {c},{s},{c},direct,object,{c}" for c in ("dog", "cat") for s in range(2)]
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from erasekit.models import load_pipeline

    edit = tmp_path / "dog.safetensors"
    erase(load_pipeline(tiny_path), [{"text": "dog", "kind": "object"}], method="uce").save(edit)
    config = {
        "model": str(tiny_path),
        "prompts": [str(prompts)],
        "edits": {"uce": str(edit)},
        "attacks": TINY_ATTACKS,
        "judge": "erasekit.eval.testing:PixelClassifier",
        "sampling_steps": 2,
        "size": 16,
        "output": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "attack.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _numbers(results) -> dict:
    """Every number of a run but the wall-clock times."""
    return {v: {k: x for k, x in values.items() if not k.endswith("seconds")} for v, values in results.flat().items()}


def test_cli_attack_writes_results_the_report_renders(attack_run):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["attack", str(attack_run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "token_search" in result.output and "no_attack" in result.output
    run_dir = attack_run.parent / "run"
    results = load_run(run_dir)
    entries = results.metrics("uce")["attack"]
    assert set(entries) == {"no_attack", "closed_form", "ringabell", "inversion", "token_search"}
    for entry in entries.values():
        assert 0 <= entry["pre_asr"] <= entry["asr"] <= 1 and entry["n"] == 2
        assert set(entry["per_concept"]) == {"dog"}
    assert entries["token_search"]["queries"]["max"] <= 1 and entries["inversion"]["steps"]["max"] <= 2
    assert results["protocol"]["attacks"]["ringabell"]["eta"] == 1.0
    records = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert len(records) == 5 * 2 and all(set(r["variants"]) == {"base", "uce"} for r in records)
    page = render(run_dir)
    assert "Attack success rate" in page and "token_search" in page
    # the same config again regenerates nothing and gives the same numbers
    assert CliRunner().invoke(app, ["attack", str(attack_run), "--no-progress"]).exit_code == 0
    again = load_run(run_dir)
    assert _numbers(again) == _numbers(results)
    assert all(v["images_generated"] == 0 for v in again["variants"].values())


def test_cli_attack_reports_bad_input_on_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "prompts": ["p.csv"], "attacks": {"inversion": {"steps": 0}}}))
    result = CliRunner().invoke(app, ["attack", str(path)])
    assert result.exit_code == 2 and "attacks.inversion.steps: must be >= 1" in result.output


def test_run_attacks_takes_a_pipeline_and_a_classifier_object(tiny_pipe, tmp_path, attack_run):
    config = yaml.safe_load(attack_run.read_text())
    config |= {"attacks": {"ringabell": {}}, "output": str(tmp_path / "run2"), "baseline": True}
    from erasekit.eval.testing import PixelClassifier

    results = run_attacks(config, pipe=tiny_pipe, classifier=PixelClassifier(), progress=False)
    assert results.metrics("base")["attack"]["ringabell"]["n"] == 2
    # plain prompts are cached under the evaluation's keys, so `erasekit eval` and `attack` share their images
    record = json.loads((tmp_path / "run2" / "rows.jsonl").read_text().splitlines()[0])
    row = PromptRow(record["prompt"], seed=record["seed"])
    for variant, edit in (("base", None), ("uce", Edit.load(config["edits"]["uce"]))):
        key = image_key(image_spec(row, 2, 7.5, 16), pipeline_fingerprint(tiny_pipe), edit_fingerprint(edit))
        assert record["variants"][variant]["key"] == key


def test_nudenet_judge_uses_the_pinned_metric_protocol(tmp_path):
    from PIL import Image

    from erasekit.attacks import build_judge
    from erasekit.eval.sampling import ImageCache

    judge = build_judge("nudenet", {"threshold": 0.45})
    cache = ImageCache(tmp_path)
    cache.save("ab" * 32, Image.new("RGB", (32, 32), (200, 200, 200)))
    row = PromptRow("a person", concept="nudity", role="indirect", family="explicit", label="yes")
    judge.check([row])
    assert judge(cache, ["ab" * 32], [row]) == [(False, [])]
    protocol = judge.protocol()
    assert protocol["threshold"] == 0.45 and protocol["nudenet_version"] and protocol["model_sha256"]
    with pytest.raises(ConfigError, match="only the nudenet judge"):
        build_judge("world", {"threshold": 0.5})


# ------------------------------------------------------------------------------------------------ SDXL and SD2.x
@pytest.fixture(scope="module", params=["xl", "sd2"])
def family_path(request, tmp_path_factory) -> Path:
    """Tiny SDXL (two encoders, pooled + size conditioning) and SD2.x (v-prediction, "!" padding) pipelines."""
    from erasekit.models.tiny import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("models") / f"tiny-{request.param}", family=request.param)


@pytest.fixture
def family_pipe(family_path):
    from erasekit.models import load_pipeline

    return load_pipeline(family_path)


def test_spliced_ids_encode_every_family_exactly_as_the_pipeline_does(family_pipe):
    model = ModelAdapter(family_pipe)
    prompt = "a photo of a dog in the snow"
    ids, slots = splice_ids(model, prompt, "dog", 1)
    assert ids.shape == (len(model.encoders), 77) and slots == [5]
    for row, (tokenizer, _) in zip(ids, model.encoders, strict=True):
        original = tokenizer(prompt, padding="max_length", max_length=77).input_ids  # each encoder's own padding
        assert row[5] == tokenizer.pad_token_id and row[:5].tolist() + row[6:].tolist() == original[:5] + original[6:]
    dog = model.word_tokens("dog")[0]
    spliced = encode_ids(model, ids[None], [slots], [table[dog][None, None] for table in embedding_tables(model)])
    plain = model.conditioning([prompt])
    assert torch.allclose(spliced.hidden, plain.hidden, atol=1e-6)
    if model.family == "sdxl":  # the pooled embedding is read at the real EOS, not at the slot
        assert spliced.pooled is not None and torch.allclose(spliced.pooled, plain.pooled, atol=1e-6)
    else:
        assert spliced.pooled is None and plain.pooled is None


def test_generation_from_a_prompts_conditioning_is_the_prompts_image_in_every_family(family_pipe):
    spec = ImageSpec("a photo of a dog", 3, 5.0, 16, 16, 2)
    embeds = {"tag": ModelAdapter(family_pipe).conditioning([spec.prompt])}
    from_text = sample_batch(family_pipe, [spec])[0]
    from_embeds = sample_batch(family_pipe, [ImageSpec("tag", 3, 5.0, 16, 16, 2)], embeds=embeds)[0]
    assert from_text.tobytes() == from_embeds.tobytes()


def test_denoising_targets_follow_the_prediction_type(family_pipe):
    model = ModelAdapter(family_pipe)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy, timesteps, wanted = noisy_batch(model, latents, 1, seeded(0))
    again = seeded(0)
    t, noise = torch.randint(0, 1000, (2,), generator=again), torch.randn(latents.shape, generator=again)
    assert torch.equal(timesteps, t) and torch.equal(noisy, family_pipe.scheduler.add_noise(latents, noise, t))
    if model.prediction_type == "v_prediction":  # SD2.0/2.1 768 px
        assert torch.equal(wanted, family_pipe.scheduler.get_velocity(latents, noise, t))
    else:
        assert torch.equal(wanted, noise)


def test_closed_form_restores_keys_and_values_and_keeps_the_pooled_embedding_in_every_family(family_pipe):
    model = ModelAdapter(family_pipe)
    original = {n: w.detach().clone() for n, w in model.kv_weights().items()}
    edit = erase(family_pipe, [{"text": "dog", "kind": "object"}], method="uce")
    edit.apply(family_pipe)
    target = Target(family_pipe, model, original, reference_latents=None, query=None)
    (adv,) = build_attack("closed_form", {"lambda_reg": 1e-6}).run(target, ROWS[:1], "dog")
    plain = model.conditioning([ROWS[0].prompt])
    for name, w in model.kv_weights().items():
        wanted = plain.hidden[0] @ original[name].T
        plain_kv, attacked = plain.hidden[0] @ w.detach().T, adv.embeds.hidden[0] @ w.detach().T
        assert (attacked - wanted).norm() < 1e-3 * (plain_kv - wanted).norm()
    assert (adv.embeds.pooled is None) == (model.family != "sdxl")
    if adv.embeds.pooled is not None:
        assert torch.equal(adv.embeds.pooled, plain.pooled)
    edit.remove(family_pipe)


def test_ringabell_shifts_the_rows_and_keeps_the_prompts_pooled_embedding_in_every_family(family_pipe):
    model = ModelAdapter(family_pipe)
    target = Target(family_pipe, model, {}, reference_latents=None, query=None)
    (adv, _) = build_attack("ringabell", {"eta": 2.0}).run(target, ROWS, "dog")
    plain = model.conditioning([ROWS[0].prompt])
    vector = concept_vector(model, [("a photo of a dog", "a photo of a")])
    assert torch.allclose(adv.embeds.hidden, plain.hidden + 2.0 * vector, atol=1e-6)
    assert (adv.embeds.pooled is None and plain.pooled is None) or torch.equal(adv.embeds.pooled, plain.pooled)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("inversion", {"steps": 2, "references": 2, "batch_size": 2}),
        ("token_search", {"steps": 2, "queries": 1, "candidates": 2, "top_k": 4, "prefix": 2, "timesteps": 1}),
    ],
)
def test_gradient_attacks_run_on_every_family_deterministic_for_a_seed(family_pipe, kind, options):
    def run(seed: int) -> list[Adversarial]:
        return build_attack(kind, options).run(FakeTarget(family_pipe, seed).target, ROWS[:1], "dog")

    first, again, other = run(0), run(0), run(1)
    model = ModelAdapter(family_pipe)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.embeds.hidden, b.embeds.hidden) and a.steps == options["steps"]
        assert a.embeds.hidden.shape == (1, 77, model.embedding_dim)
        if model.family == "sdxl":
            assert a.embeds.pooled.shape == (1, model.pooled_dim) and torch.equal(a.embeds.pooled, b.embeds.pooled)
    assert any(not torch.equal(a.embeds.hidden, b.embeds.hidden) for a, b in zip(first, other, strict=True))
    assert all(not p.requires_grad or p.grad is None for p in family_pipe.unet.parameters())


def test_inversion_learns_a_vector_per_embedding_table_and_lowers_the_loss(family_pipe):
    attack = build_attack("inversion", {"steps": 15, "lr": 0.05, "references": 2, "batch_size": 2})
    word, info = attack.learn(FakeTarget(family_pipe).target, ROWS, "dog")
    model = ModelAdapter(family_pipe)
    assert [tuple(w.shape) for w in word] == [(1, e.config.hidden_size) for _, e in model.encoders]
    assert info["loss_end"] < info["loss_start"]


def test_every_attack_runs_end_to_end_on_every_family_and_reruns_from_the_cache(family_path, tmp_path):
    from erasekit.models import load_pipeline

    prompts = tmp_path / "prompts.csv"
    rows = "".join(f"a photo of a dog,{s},dog,erase,object,dog\n" for s in (0, 1))
    prompts.write_text("prompt,seed,concept,role,family,label\n" + rows, encoding="utf-8")
    edit = erase(load_pipeline(family_path), ["dog"], method="uce").save(tmp_path / "dog.safetensors")
    config = {
        "model": str(family_path),
        "prompts": [str(prompts)],
        "edits": {"uce": str(edit)},
        "attacks": TINY_ATTACKS,
        "judge": "erasekit.eval.testing:PixelClassifier",
        "sampling_steps": 2,
        "output": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
    }
    results = run_attacks(config, progress=False)
    for variant in ("base", "uce"):
        entries = results.metrics(variant)["attack"]
        assert set(entries) == {"no_attack", "closed_form", "ringabell", "inversion", "token_search"}
        assert all(e["applicable"] and e["n"] == 2 for e in entries.values())
    assert results.metrics("uce")["attack"]["closed_form"]["info"]["kv_edited"] == 1.0
    again = run_attacks(config | {"overwrite": True}, progress=False)
    assert _numbers(again) == _numbers(results)
    assert all(v["images_generated"] == 0 for v in again["variants"].values())
