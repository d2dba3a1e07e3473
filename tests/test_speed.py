"""SPEED: the null-space closed form leaves the refined retain set and the invariants unchanged, moves the erased rows
as its equation says, and is one deterministic edit of the V (or K/V) weights on every model family."""

from __future__ import annotations

import pytest
import torch

from erasekit import ConceptSet, erase
from erasekit.errors import ConfigError, NumericalError
from erasekit.linalg import cross, gram
from erasekit.methods.speed import (
    SPEED,
    kmeans,
    null_space_projector,
    refine,
    retain_texts,
    speed_transform,
)
from erasekit.models import ModelAdapter, load_pipeline

PRESERVE = ["cat", "a red car", "tree", "a castle on a hill"]


def _random_problem(seed: int, d: int = 12, retained: int = 5):
    """Targets, anchors, retain rows, invariants and a weight, in float64."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    c1, c_star, retain, W = rand(3, d), rand(3, d), rand(retained, d), rand(7, d)
    return c1, c_star, retain, rand(d, 4), W


def _statistics(c1: torch.Tensor, c_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gram(c1, 1 / len(c1)), cross(c_star, c1, 1 / len(c1))


def test_speed_transform_equals_the_papers_update_written_literally():
    c1, c_star, retain, C2, W = _random_problem(0)
    T, A = _statistics(c1, c_star)
    P = null_space_projector(retain, tau=1e-8)
    rho, lamb = 0.7, 0.3
    I = torch.eye(len(T), dtype=torch.float64)  # noqa: E741
    M = torch.linalg.inv(T @ P + rho * I)
    inner = torch.linalg.inv(C2.T @ P @ M @ C2 + lamb * torch.eye(4, dtype=torch.float64))
    literal = W @ (A - T) @ P @ (I - M @ C2 @ inner @ C2.T @ P) @ M
    assert torch.allclose(W @ speed_transform(T, A, P, C2, rho, lamb) - W, literal, atol=1e-10)


def test_the_update_leaves_retained_rows_and_invariants_unchanged_with_lambda_zero():
    c1, c_star, retain, C2, W = _random_problem(1)
    T, A = _statistics(c1, c_star)
    dW = W @ speed_transform(T, A, null_space_projector(retain, tau=1e-8), C2, rho=1.0, lamb=0.0) - W
    assert dW.abs().max() > 1e-2, "the update must do something"
    assert (dW @ retain.T).abs().max() < 1e-10 * (W @ retain.T).abs().max()
    assert (dW @ C2).abs().max() < 1e-10 * (W @ C2).abs().max()


def test_without_retain_rows_or_invariants_the_erased_row_moves_towards_its_anchor_by_the_ridge_factor():
    c1, c_star, _, _, W = _random_problem(2)
    c1, c_star = c1[:1], c_star[:1]
    T, A = _statistics(c1, c_star)
    rho = 0.5
    transform = speed_transform(T, A, null_space_projector(c1[:0], 0.1), torch.zeros(len(T), 0), rho, 0.0)
    share = c1.square().sum() / (c1.square().sum() + rho)  # ||c1||^2 / (||c1||^2 + rho)
    expected = W @ c1[0] + share * (W @ c_star[0] - W @ c1[0])
    assert torch.allclose(W @ transform @ c1[0], expected, atol=1e-10)


def test_the_update_solves_the_ridge_problem_inside_the_null_space():
    c1, c_star, retain, _, W = _random_problem(3)
    T, A = _statistics(c1, c_star)
    P = null_space_projector(retain, tau=1e-8)
    rho = 0.2
    dW = W @ speed_transform(T, A, P, torch.zeros(len(T), 0), rho, 0.0) - W
    assert torch.allclose(dW @ P, dW, atol=1e-10), "the update lives in the null space"
    # gradient of mean ||(W + dW) c1 - W c*||^2 + rho ||dW||^2, restricted to the null space, vanishes
    gradient = (dW @ T - W @ (A - T) + rho * dW) @ P
    assert gradient.abs().max() < 1e-10


def test_the_projector_keeps_only_directions_below_tau():
    _, _, retain, _, _ = _random_problem(4)
    P = null_space_projector(retain, tau=1e-8)
    assert torch.allclose(P @ P, P, atol=1e-12) and torch.allclose(P, P.T)
    assert round(float(torch.trace(P))) == retain.shape[1] - len(retain)
    assert torch.allclose(null_space_projector(retain, tau=1e6), torch.eye(retain.shape[1], dtype=torch.float64))


def test_ipf_keeps_rows_above_mean_influence_and_dpa_adds_copies_along_the_weakest_direction():
    _, _, retain, _, W = _random_problem(5, retained=20)
    D = torch.randn(7, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = (retain @ D.T).norm(dim=1)
    kept = refine(W, D, retain, ipf=True, copies=0, generator=torch.Generator())
    assert torch.equal(kept, retain[score > score.mean()])
    refined = refine(W, D, retain, ipf=True, copies=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(refined[: len(kept)], kept) and len(kept) < len(refined) < len(kept) * 11
    v = torch.linalg.svd(W, full_matrices=False).Vh[-1]
    residual = refined[len(kept) :] - (refined[len(kept) :] @ v)[:, None] * v
    sources = kept - (kept @ v)[:, None] * v
    # copies are filtered, so each is matched to its source row by what remains off v
    assert torch.cdist(residual, sources).amin(1).max() < 1e-6, "every copy differs from a kept row along v only"


def test_retain_texts_drop_those_naming_a_target_as_a_whole_word():
    assert retain_texts(["dog house", "hotdog", "a cat", "Big Dog"], ["dog"]) == ["hotdog", "a cat"]


def test_kmeans_is_deterministic_and_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    rows = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g, dtype=torch.float64) for c in centres])
    found = kmeans(rows, 3, torch.Generator().manual_seed(0))
    assert torch.equal(found, kmeans(rows, 3, torch.Generator().manual_seed(0)))
    assert torch.cdist(centres, found).amin(1).max() < 0.1


def _last_rows(model: ModelAdapter, texts: list[str]) -> torch.Tensor:
    encoded = model.encode(texts)
    return torch.stack([encoded[i, model.last_word_index(t)] for i, t in enumerate(texts)])


@pytest.mark.parametrize("model_name", ["erasekit:tiny", "erasekit:tiny-sd2", "erasekit:tiny-xl"])
def test_fitted_edit_keeps_preserved_texts_and_the_empty_prompts_start_row(model_name):
    """End to end on SD1.x, SD2.x and SDXL layouts: without IPF/DPA the refined retain set is the preserved texts'
    rows."""
    pipe = load_pipeline(model_name)
    model = ModelAdapter(pipe)
    edit = erase(pipe, ["dog"], method="speed", preserve=PRESERVE, params={"ipf": False, "dpa_copies": 0, "tau": 1e-6})
    kept = torch.cat([_last_rows(model, PRESERVE), model.encode([""])[0, :1]])
    erased = _last_rows(model, ["dog"])
    assert set(edit.weights) == {layer.value_weight for layer in model.layers}, "V only by default"
    for layer in model.layers:
        W, W_new = layer.to_v.weight.detach(), edit.weights[layer.value_weight]
        scale = (kept @ W.T).abs().max()
        assert (kept @ W_new.T - kept @ W.T).abs().max() < 1e-5 * scale
        assert (erased @ W_new.T - erased @ W.T).abs().max() > 1e-2 * scale, "the erased row must move"


def test_fit_is_deterministic_for_a_seed_and_the_seed_matters(tiny_pipe):
    fit = lambda seed: erase(tiny_pipe, ["dog"], method="speed", preserve=PRESERVE, params={"seed": seed})  # noqa: E731
    first, again, other = fit(0), fit(0), fit(1)
    assert all(torch.equal(first.weights[k], again.weights[k]) for k in first.weights)
    assert any(not torch.equal(first.weights[k], other.weights[k]) for k in first.weights), "DPA draws from the seed"


def test_keys_values_or_both_are_edited_as_asked(tiny_pipe):
    model = ModelAdapter(tiny_pipe)
    both = erase(tiny_pipe, ["dog"], method="speed", params={"edit_keys": True})
    keys = erase(tiny_pipe, ["dog"], method="speed", params={"edit_keys": True, "edit_values": False})
    assert set(both.weights) == set(model.kv_weights())
    assert set(keys.weights) == {layer.key_weight for layer in model.layers}


def test_explicit_kind_selects_the_all_token_mode_whatever_the_word():
    method = SPEED()
    assert method.settings("explicit").all_tokens and not method.settings("object").all_tokens
    assert method.settings("explicit").lamb == 0.5 and method.settings("celebrity").tau == 1e-4


def test_all_token_mode_also_maps_the_concepts_padding_rows_to_the_anchors():
    """With the null space opened up (tau above every eigenvalue) and no invariants, the all-token mode brings the
    rows after the concept's words close to the anchor's rows at the same positions; the last-token mode does not."""
    pipe = load_pipeline("erasekit:tiny")
    model = ModelAdapter(pipe)
    open_space = {"tau": 1e9, "iec": False}
    concept = [{"text": "bare skin", "kind": "explicit"}]
    every = erase(pipe, concept, method="speed", params=open_space)
    last = erase(pipe, concept, method="speed", params={**open_space, "all_tokens": False})
    rows = model.encode(["bare skin", " "])  # " ": the explicit kind's anchor
    padding, anchor = rows[0, 10:], rows[1, 10:]
    for layer in model.layers:
        W = layer.to_v.weight.detach()
        gap = lambda W_new: (padding @ W_new.T - anchor @ W.T).norm()  # noqa: E731,B023
        assert gap(every.weights[layer.value_weight]) < 0.25 * gap(W)
        assert gap(last.weights[layer.value_weight]) > 0.5 * gap(W)


def test_the_all_token_mode_follows_the_kind_not_the_word():
    pipe = load_pipeline("erasekit:tiny")
    explicit = erase(pipe, [{"text": "bare skin", "kind": "explicit"}], method="speed")
    as_object = erase(pipe, [{"text": "bare skin", "kind": "object"}], method="speed", params=SPEED.presets["explicit"])
    nudity = erase(pipe, [{"text": "nudity", "kind": "object"}], method="speed")
    assert explicit.config["all_tokens"] and not nudity.config["all_tokens"]
    assert all(torch.equal(explicit.weights[k], as_object.weights[k]) for k in explicit.weights)


def test_invariants_in_the_retained_span_need_a_positive_lambda(tiny_pipe):
    concept = [{"text": "bare skin", "kind": "explicit"}]
    with pytest.raises(NumericalError, match="lambda"):
        erase(tiny_pipe, concept, method="speed", params={"lamb": 0.0, "ipf": False, "dpa_copies": 0, "tau": 1e-9})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"rho": 0}, r"speed params\.rho: must be > 0, got 0"),
        ({"tau": -1}, r"speed params\.tau: must be >= 0"),
        ({"dpa_copies": -2}, r"speed params\.dpa_copies: must be >= 0"),
        ({"lamb": -0.1}, r"speed params\.lamb: must be >= 0"),
        ({"edit_keys": False, "edit_values": False}, "cannot both be false"),
        ({"ipf": "yes"}, r"speed params\.ipf: expected true or false"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(params, message):
    with pytest.raises(ConfigError, match=message) as error:
        SPEED(params)
    assert "\n" not in str(error.value)


def test_concepts_of_several_kinds_need_one_run_per_kind(tiny_model):
    concepts = ConceptSet.build([{"text": "dog"}, {"text": "Monet", "kind": "style"}])
    with pytest.raises(ConfigError, match="several kinds"):
        SPEED().fit(tiny_model, concepts)
