"""RECE: the derived embedding solves its own normal equations, epochs compound, validation picks the epoch."""

from __future__ import annotations

import pytest
import torch

from erasekit import ConceptSet, Edit
from erasekit.errors import ConfigError
from erasekit.methods.rece import RECE, derive_embedding, original_gram
from erasekit.methods.uce import UCE


def test_derived_embedding_zeroes_gradient_of_its_objective():
    g = torch.Generator().manual_seed(0)
    d = 6
    Ws = [torch.randn(out, d, generator=g, dtype=torch.float64) for out in (4, 8, 5)]
    T = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    c = torch.randn(3, d, generator=g, dtype=torch.float64)  # three token rows
    lam = 0.05
    c_adv = derive_embedding(c, T, original_gram({str(i): W for i, W in enumerate(Ws)}), lam)
    # objective per row: sum_l ||W'_l c' - W_l c||^2 + lam ||c'||^2 with W'_l = W_l T, evaluated layer by layer
    grad = sum(2 * (c_adv @ (W @ T).T - c @ W.T) @ (W @ T) for W in Ws) + 2 * lam * c_adv
    assert grad.abs().max() < 1e-9


def test_derived_embedding_tends_to_the_inverse_edit_as_regularisation_vanishes():
    g = torch.Generator().manual_seed(1)
    d = 5
    W = torch.randn(12, d, generator=g, dtype=torch.float64)
    T = torch.eye(d, dtype=torch.float64) + 0.2 * torch.randn(d, d, generator=g, dtype=torch.float64)
    c = torch.randn(2, d, generator=g, dtype=torch.float64)
    c_adv = derive_embedding(c, T, original_gram({"w": W}), 1e-10)
    assert torch.allclose(c_adv, c @ torch.linalg.inv(T).T, atol=1e-6)  # rows: c^T T^-T


def _kv_outputs(weights: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows.double() @ w.detach().double().T for w in weights.values()], dim=-1)


def test_derived_embedding_regenerates_the_concept_on_the_uce_model(tiny_model):
    concepts = ConceptSet.build([{"text": "nudity", "kind": "explicit"}])
    T = UCE().transform(tiny_model, concepts).dense()
    originals = tiny_model.kv_weights()
    edited = {n: w.detach().double() @ T for n, w in originals.items()}
    c = tiny_model.encode(["nudity"])[0].double()
    c_adv = derive_embedding(c, T, original_gram(originals), 1e-3)
    want = _kv_outputs(originals, c)
    plain_gap = (_kv_outputs(edited, c) - want).norm()
    attack_gap = (_kv_outputs(edited, c_adv) - want).norm()
    assert attack_gap < 0.5 * plain_gap, "the derived embedding should undo the UCE edit for the concept"


def test_rece_resists_the_embedding_attack_better_than_uce(tiny_model):
    concepts = ConceptSet.build([{"text": "nudity", "kind": "explicit"}])
    originals = tiny_model.kv_weights()
    c = tiny_model.encode(["nudity"])[0].double()
    want = _kv_outputs(originals, c)
    G = original_gram(originals)

    def attack_gap(edit: Edit) -> float:
        # the best attack against these weights: re-derive c' for them (T recovered from the first matrix)
        first = next(iter(originals))
        W0, W1 = originals[first].detach().double(), edit.weights[first].double()
        T = torch.linalg.lstsq(W0, W1).solution
        c_adv = derive_embedding(c, T, G, 0.1)
        return float((_kv_outputs(edit.weights, c_adv) - want).norm())

    uce_edit = UCE().fit(tiny_model, concepts)
    rece_edit = RECE(epochs=3).fit(tiny_model, concepts)
    assert attack_gap(rece_edit) > 1.2 * attack_gap(uce_edit)  # measured 35.4 vs 26.3 here


def test_rece_with_zero_epochs_is_uce(tiny_model):
    concepts = ConceptSet.build(["dog"])
    rece = RECE(epochs=0).fit(tiny_model, concepts)
    uce = UCE().fit(tiny_model, concepts)
    assert all(torch.equal(rece.weights[k], uce.weights[k]) for k in uce.weights)


def test_rece_stores_one_derived_embedding_per_epoch_and_concept(tiny_model, tmp_path):
    edit = RECE(epochs=2).fit(tiny_model, ConceptSet.build(["dog", "castle"]))
    assert set(edit.extras) == {"rece/embeddings/epoch1", "rece/embeddings/epoch2"}
    assert edit.extras["rece/embeddings/epoch1"].shape == (2, 77, tiny_model.embedding_dim)
    loaded = Edit.load(edit.save(tmp_path / "rece.safetensors"))
    assert all(torch.equal(loaded.extras[k], v) for k, v in edit.extras.items())
    assert loaded.info["epochs_run"] == 2


def test_rece_validator_keeps_the_best_epoch(tiny_model):
    concepts = ConceptSet.build(["dog"])
    scores = [3.0, 1.0, 2.0, 5.0]  # epoch 0 is the UCE stage
    calls = []

    def validator(epoch, model):
        calls.append((epoch, tiny_model.kv_weights()[next(iter(tiny_model.kv_weights()))].detach().clone()))
        return scores[epoch]

    before = {k: v.detach().clone() for k, v in tiny_model.kv_weights().items()}
    edit = RECE(epochs=3).fit(tiny_model, concepts, validator=validator)
    assert [e for e, _ in calls] == [0, 1, 2, 3]
    assert edit.info["selected_epoch"] == 1 and edit.info["validation_scores"] == scores
    assert all(torch.equal(before[k], v) for k, v in tiny_model.kv_weights().items()), "weights restored"
    one_epoch = RECE(epochs=1).fit(tiny_model, concepts)
    assert all(torch.equal(edit.weights[k], one_epoch.weights[k]) for k in edit.weights)
    assert torch.equal(calls[1][1], one_epoch.weights[next(iter(one_epoch.weights))]), "validator saw epoch 1"


def test_rece_validator_is_a_declared_keyword_only_fit_option(tiny_model):
    assert RECE.fit_options() == ["validator"]
    with pytest.raises(TypeError):
        RECE(epochs=0).fit(tiny_model, ConceptSet.build(["dog"]), lambda epoch, model: 0.0)


def test_rece_rejects_a_zero_lambda_reg_naming_it():
    with pytest.raises(ConfigError, match=r"rece params\.lambda_reg: must be > 0, got 0"):
        RECE(lambda_reg=0)


def test_rece_epochs_default_per_kind(tiny_model):
    explicit = RECE().fit(tiny_model, ConceptSet.build([{"text": "nudity", "kind": "explicit"}]))
    style = RECE().fit(tiny_model, ConceptSet.build([{"text": "van gogh", "kind": "style"}]))
    assert explicit.info["epochs_run"] == 3 and style.info["epochs_run"] == 1
