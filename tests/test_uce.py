"""UCE: the shared-T closed form minimises the UCE objective, and the edit touches exactly the K/V weights."""

from __future__ import annotations

import pytest
import torch

from erasekit import ConceptSet, erase
from erasekit.methods.uce import UCE, erase_pairs, preserve_list, token_rows, uce_update


def _random_rows(seed: int, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(3, d, generator=g, dtype=torch.float64)
    G = torch.randn(3, d, generator=g, dtype=torch.float64)
    R = torch.randn(5, d, generator=g, dtype=torch.float64)
    Ws = [torch.randn(out, d, generator=g, dtype=torch.float64) for out in (4, 9)]
    return C, G, R, Ws


@pytest.mark.parametrize("s_e, s_p, lam", [(1.0, 0.1, 0.5), (3.0, 1.0, 0.01), (0.5, 0.0, 1.0)])
def test_uce_solution_zeroes_gradient_of_objective(s_e, s_p, lam):
    C, G, R, Ws = _random_rows(0)
    T = uce_update(C, G, R, s_e, s_p, lam).dense()
    for W_old in Ws:
        W = W_old @ T
        # objective: s_e sum ||W c - W_old g||^2 + s_p sum ||W r - W_old r||^2 + lam ||W - W_old||^2
        grad = 2 * s_e * (W @ C.T - W_old @ G.T) @ C + 2 * s_p * (W @ R.T - W_old @ R.T) @ R + 2 * lam * (W - W_old)
        assert grad.abs().max() < 1e-9


def test_uce_solution_equals_direct_least_squares_per_matrix():
    C, G, R, Ws = _random_rows(1)
    s_e, s_p, lam = 1.0, 0.3, 0.5
    T = uce_update(C, G, R, s_e, s_p, lam).dense()
    d = C.shape[1]
    for W_old in Ws:
        design = torch.cat([s_e**0.5 * C, s_p**0.5 * R, lam**0.5 * torch.eye(d, dtype=torch.float64)])
        target = torch.cat([s_e**0.5 * G @ W_old.T, s_p**0.5 * R @ W_old.T, lam**0.5 * W_old.T])
        direct = torch.linalg.lstsq(design, target).solution.T
        assert torch.allclose(W_old @ T, direct, atol=1e-10)


def _state(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": t.clone()
        for part in ("unet", "text_encoder", "vae")
        for name, t in getattr(pipe, part).state_dict().items()
    }


def test_uce_edit_changes_exactly_the_cross_attention_kv_weights(tiny_pipe, tiny_model):
    before = _state(tiny_pipe)
    edit = erase(tiny_pipe, ["dog"], method="uce", preserve=["cat"])
    assert _state(tiny_pipe).keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in _state(tiny_pipe).items()), "fit must not modify the model"
    expected = {f"{layer.name}.to_{p}.weight" for layer in tiny_model.layers for p in "kv"}
    assert set(edit.weights) == expected
    edit.apply(tiny_pipe)
    changed = {k for k, v in _state(tiny_pipe).items() if not torch.equal(before[k], v)}
    assert changed == {f"unet.{k}" for k in expected}


def test_uce_edit_keys_false_changes_only_value_projections(tiny_pipe):
    edit = erase(tiny_pipe, ["dog"], params={"edit_keys": False})
    assert edit.weights and all(name.endswith("attn2.to_v.weight") for name in edit.weights)


def test_uce_fit_matches_the_per_layer_closed_form_on_a_model(tiny_model):
    concepts = ConceptSet.build(["dog"], ["cat", "a car"])
    method = UCE()
    edit = method.fit(tiny_model, concepts)
    preserve = preserve_list(concepts, empty=True)
    C, G, R = token_rows(tiny_model, erase_pairs(concepts, False, False), preserve, "uce_legacy")
    C, G, R = C.double(), G.double(), R.double()
    s_p, lam = max(0.1, 1 / len(preserve)), 0.5
    eye = torch.eye(C.shape[1], dtype=torch.float64)
    for name, W_old in tiny_model.kv_weights().items():
        W_old = W_old.detach().double()
        num = lam * W_old + W_old @ G.T @ C + s_p * W_old @ R.T @ R
        W = num @ torch.linalg.inv(lam * eye + C.T @ C + s_p * R.T @ R)
        assert torch.allclose(edit.weights[name].double(), W, atol=1e-5), name


def test_uce_maps_the_concept_outputs_onto_the_guide_outputs(tiny_model):
    # one row per text (uce_2025) so the map can be exact; the legacy policy's 76 rows overdetermine a 32-d tiny model
    emb = tiny_model.encode(["dog", "a cat"])
    erased, guide = emb[0, 1:2], emb[1, 2:3]  # last word tokens: "dog" at 1, "cat" at 2
    edit = UCE(lamb=0.01, preserve_empty=False, token_policy="uce_2025").fit(
        tiny_model, ConceptSet.build([{"text": "dog", "guide": "a cat"}])
    )
    for name, W_old in tiny_model.kv_weights().items():
        target = guide @ W_old.detach().T
        gap_before = (erased @ W_old.detach().T - target).norm()
        gap_after = (erased @ edit.weights[name].T - target).norm()
        assert gap_after < 0.05 * gap_before, name


def test_uce_leaves_preserved_prompts_nearly_unchanged(tiny_model):
    edit = UCE(preserve_scale=10.0).fit(tiny_model, ConceptSet.build(["dog"], ["a red car"]))
    kept = tiny_model.encode(["a red car"])[0]
    erased = tiny_model.encode(["dog"])[0]
    for name, W_old in tiny_model.kv_weights().items():
        W_old, W = W_old.detach(), edit.weights[name]
        drift_kept = ((kept @ W.T) - (kept @ W_old.T)).norm() / (kept @ W_old.T).norm()
        drift_erased = ((erased @ W.T) - (erased @ W_old.T)).norm() / (erased @ W_old.T).norm()
        assert drift_kept < 0.2 * drift_erased, name


@pytest.mark.parametrize(
    "policy, rows_per_concept, rows_per_preserve", [("uce_legacy", 76, 77), ("uce_2025", 1, 1), ("rece", 77, 77)]
)
def test_token_policy_selects_documented_rows(tiny_model, policy, rows_per_concept, rows_per_preserve):
    # "dog" is one token (last word index 1), " " has none (index 0): legacy keeps 77 - max(1, 0) aligned rows
    C, G, R = token_rows(tiny_model, [("dog", " ")], ["", "a cat"], policy)
    assert C.shape == G.shape == (rows_per_concept, tiny_model.embedding_dim)
    assert R.shape == (2 * rows_per_preserve, tiny_model.embedding_dim)


def test_uce_2025_policy_uses_the_last_word_token(tiny_model):
    C, G, _ = token_rows(tiny_model, [("van gogh", "art")], [], "uce_2025")
    full = tiny_model.encode(["van gogh", "art"])
    assert torch.allclose(C[0], full[0, 2], atol=1e-5)  # BOS, van, gogh -> index 2
    assert torch.allclose(G[0], full[1, 1], atol=1e-5)


def test_uce_default_preserve_scale_follows_legacy_rule(tiny_model, monkeypatch):
    seen = {}
    import erasekit.methods.uce as uce_module

    real = uce_module.uce_update

    def spy(C, G, R, erase_scale, preserve_scale, lamb):
        seen["s_p"] = preserve_scale
        return real(C, G, R, erase_scale, preserve_scale, lamb)

    monkeypatch.setattr(uce_module, "uce_update", spy)
    UCE().fit(tiny_model, ConceptSet.build(["dog"]))
    assert seen["s_p"] == 1.0  # only '' preserved
    UCE().fit(tiny_model, ConceptSet.build(["dog"], [f"thing {i}" for i in range(20)]))
    assert seen["s_p"] == pytest.approx(0.1)


def test_uce_templates_and_synonyms_expand_the_erased_texts():
    concepts = ConceptSet.build([{"text": "Van Gogh", "kind": "style", "synonyms": ["Vincent"]}])
    pairs = erase_pairs(concepts, templates=True, synonyms=True)
    assert ("painting by Van Gogh", "art") in pairs and ("style of Vincent", "art") in pairs
    assert len(pairs) == 12 and {g for _, g in pairs} == {"art"}


def test_uce_fit_is_deterministic(tiny_model):
    a = UCE().fit(tiny_model, ConceptSet.build(["dog", "castle"], ["cat"]))
    b = UCE().fit(tiny_model, ConceptSet.build(["dog", "castle"], ["cat"]))
    assert a.base_fingerprint == b.base_fingerprint
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


@pytest.mark.parametrize("rows", [3, 40])
def test_the_factored_update_equals_the_dense_closed_form(rows):
    """``W + (W U) V^T`` (thin: 3 erased rows of 16 columns) and ``W @ T`` (wide: 40) give the dense solution of
    ``T (lam I + s_e C^T C + s_p R^T R) = lam I + s_e G^T C + s_p R^T R`` to float64 precision."""
    from erasekit.methods.uce import uce_update

    g = torch.Generator().manual_seed(rows)
    C, G, R = (torch.randn(n, 16, generator=g, dtype=torch.float64) for n in (rows, rows, 5))
    W = torch.randn(8, 16, generator=g, dtype=torch.float64)
    eye = torch.eye(16, dtype=torch.float64)
    expected = (0.5 * eye + 2.0 * G.T @ C + 0.3 * R.T @ R) @ torch.linalg.inv(0.5 * eye + 2.0 * C.T @ C + 0.3 * R.T @ R)
    update = uce_update(C, G, R, 2.0, 0.3, 0.5)
    assert torch.allclose(update.dense(), expected, atol=1e-10)
    assert torch.allclose(update.apply(W), W @ expected, atol=1e-10)
