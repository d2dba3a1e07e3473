"""UCE and RECE on SDXL and SD2.x, checked without erasekit's adapter.

Every expected value here is computed from what diffusers itself gives: the pipeline's own ``encode_prompt`` rows,
the token index the official UCE code reads from the first tokenizer's attention mask, and the UNet's ``attn2``
K/V modules found by name, as the official 2025 code finds them. The closed forms are written out in float64 with an
explicit inverse (erasekit solves with a Cholesky factorisation), so an agreement is not one code path checked
against itself.
"""

from __future__ import annotations

import pytest
import torch

from erasekit import ConceptSet
from erasekit.methods.rece import RECE
from erasekit.methods.uce import UCE
from erasekit.models import ModelAdapter, load_pipeline

FAMILIES = ["erasekit:tiny-xl", "erasekit:tiny-sd2"]


@pytest.fixture(scope="module", params=FAMILIES)
def pipe(request):
    """A tiny SDXL or SD2.x pipeline; nothing here modifies it (fits leave the model as it was)."""
    return load_pipeline(request.param)


@pytest.fixture(scope="module")
def xl_pipe():
    return load_pipeline("erasekit:tiny-xl")


def prompt_rows(pipe, texts: list[str]) -> torch.Tensor:
    """``[n, 77, d]`` float64: the rows the pipeline's UNet reads for ``texts`` (SDXL: both encoders' penultimate
    layers concatenated; SD2: the text encoder's output), from diffusers' ``encode_prompt``."""
    embeds = pipe.encode_prompt(prompt=texts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    return embeds[0].detach().double()


def last_token(pipe, text: str) -> int:
    """The official UCE code's index of the last word token: attention-mask length - 2 (0, BOS, for empty text)."""
    mask = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt")["attention_mask"]  # fmt: skip
    return int(mask.sum()) - 2


def kv_weights(unet) -> dict[str, torch.Tensor]:
    """Every ``attn2`` key/value weight by state-dict name (float64), selected as the official 2025 UCE code does."""
    return {
        f"{name}.weight": module.weight.detach().double()
        for name, module in unet.named_modules()
        if "attn2" in name and name.endswith(("to_k", "to_v"))
    }


def uce_closed_form(W_old, C, G, R, lam: float, s_e: float, s_p: float) -> torch.Tensor:
    """W = W_old (lam I + s_e sum g c^T + s_p sum r r^T)(lam I + s_e sum c c^T + s_p sum r r^T)^-1; rows of C, G, R
    are the vectors c, g, r."""
    eye = torch.eye(C.shape[1], dtype=torch.float64)
    target = lam * eye + s_e * G.T @ C + s_p * R.T @ R
    return W_old @ target @ torch.linalg.inv(lam * eye + s_e * C.T @ C + s_p * R.T @ R)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


ERASED, GUIDES, PRESERVED = ["dog", "van gogh"], [" ", "art"], ["cat", "a red car"]  # guides: object, style defaults
CONCEPTS = ConceptSet.build([{"text": "dog", "kind": "object"}, {"text": "van gogh", "kind": "style"}], PRESERVED)
LAM, S_E, S_P = 0.5, 1.0, 0.5


def test_uce_2025_on_sdxl_equals_the_closed_form_on_encode_prompt_rows(xl_pipe):
    # the 2025 policy (the official code's, which runs unchanged on SDXL): one row per text, its last word token
    for text in [*ERASED, *GUIDES, *PRESERVED]:
        mask = xl_pipe.tokenizer_2(text, padding="max_length", max_length=77, return_tensors="pt")["attention_mask"]
        assert int(mask.sum()) - 2 == last_token(xl_pipe, text), "both SDXL tokenizers put the last word alike"
    assert last_token(xl_pipe, " ") == 0, "an empty guide resolves to BOS"

    def last_rows(texts):
        full = prompt_rows(xl_pipe, texts)
        return torch.stack([full[i, last_token(xl_pipe, t)] for i, t in enumerate(texts)])

    C, G, R = last_rows(ERASED), last_rows(GUIDES), last_rows(PRESERVED)
    assert C.shape[1] == 80, "tiny-xl: 32 + 48-d encoders concatenated"
    edit = UCE(token_policy="uce_2025", lamb=LAM, erase_scale=S_E, preserve_scale=S_P, preserve_empty=False).fit(
        ModelAdapter(xl_pipe), CONCEPTS
    )
    expected = kv_weights(xl_pipe.unet)
    assert len(expected) == 16 and set(edit.weights) == set(expected), "8 attn2 blocks: 16 K/V matrices, all edited"
    for name, W_old in expected.items():
        # erasekit encodes only the first positions for this policy (causal encoders): equal rows up to float noise
        assert relative_gap(edit.weights[name].double(), uce_closed_form(W_old, C, G, R, LAM, S_E, S_P)) < 1e-5, name


def test_uce_legacy_equals_the_reference_row_slicing_of_encode_prompt_rows(pipe):
    # The legacy code's rows (it ran on SD1.4 and SD2.1): the erased text's last word token and every row after it,
    # aligned with the guide's from its last word token and cut to the same length; preserved texts give all 77 rows.
    # On SD2 and SDXL the rows after EOS are those of the "!" padding the pipeline itself feeds the UNet.
    erased, guides, preserved = prompt_rows(pipe, ERASED), prompt_rows(pipe, GUIDES), prompt_rows(pipe, PRESERVED)
    C, G = [], []
    for i, (text, guide) in enumerate(zip(ERASED, GUIDES, strict=True)):
        i_c, i_g = last_token(pipe, text), last_token(pipe, guide)
        farthest = max(i_c, i_g)
        C.append(erased[i, i_c : 77 - (farthest - i_c)])
        G.append(guides[i, i_g : 77 - (farthest - i_g)])
    C, G, R = torch.cat(C), torch.cat(G), preserved.reshape(-1, preserved.shape[-1])
    edit = UCE(token_policy="uce_legacy", lamb=LAM, erase_scale=S_E, preserve_scale=S_P, preserve_empty=False).fit(
        ModelAdapter(pipe), CONCEPTS
    )
    expected = kv_weights(pipe.unet)
    assert set(edit.weights) == set(expected)
    for name, W_old in expected.items():
        assert relative_gap(edit.weights[name].double(), uce_closed_form(W_old, C, G, R, LAM, S_E, S_P)) < 1e-6, name


def test_uce_maps_the_concept_rows_onto_the_guide_rows_through_every_kv(pipe):
    # one row per text (uce_2025) and a small ridge, so the map can be near exact; preserved rows are constraints too
    concepts = ConceptSet.build([{"text": "dog", "guide": "a cat"}], ["a red car", "a tree"])
    edit = UCE(token_policy="uce_2025", lamb=0.01, preserve_empty=False).fit(ModelAdapter(pipe), concepts)
    erased = prompt_rows(pipe, ["dog"])[0, [last_token(pipe, "dog")]]
    guide = prompt_rows(pipe, ["a cat"])[0, [last_token(pipe, "a cat")]]
    kept = prompt_rows(pipe, ["a red car", "a tree"])
    kept = torch.stack([kept[0, last_token(pipe, "a red car")], kept[1, last_token(pipe, "a tree")]])
    for name, W_old in kv_weights(pipe.unet).items():
        W = edit.weights[name].double()
        target = guide @ W_old.T
        assert (erased @ W.T - target).norm() < 0.05 * (erased @ W_old.T - target).norm(), name  # measured <= 0.004
        assert (kept @ W.T - kept @ W_old.T).norm() < 0.01 * (kept @ W_old.T).norm(), name  # measured <= 0.003


def test_uce_legacy_moves_preserved_texts_far_less_than_the_erased_one(pipe):
    # default policy and preserve weight, all 77 rows of each text as the UNet reads them; without the preserve term
    # (preserve_scale 0) the preserved texts move as much as the erased one here (ratio 0.9-1.2)
    edit = UCE(preserve_empty=False).fit(ModelAdapter(pipe), ConceptSet.build(["dog"], ["a red car", "a tree"]))
    kept, erased = prompt_rows(pipe, ["a red car", "a tree"]), prompt_rows(pipe, ["dog"])
    for name, W_old in kv_weights(pipe.unet).items():
        W = edit.weights[name].double()
        drift_kept = (kept @ W.T - kept @ W_old.T).norm() / (kept @ W_old.T).norm()
        drift_erased = (erased @ W.T - erased @ W_old.T).norm() / (erased @ W_old.T).norm()
        assert drift_kept < 0.1 and drift_kept < 0.5 * drift_erased, name  # measured <= 0.05 and <= 0.35 x


@pytest.mark.parametrize("kind, lambda_reg", [("explicit", 0.1), ("style", 1e-3)])
def test_rece_on_sdxl_solves_its_normal_equations_every_epoch(xl_pipe, kind, lambda_reg):
    model = ModelAdapter(xl_pipe)
    concepts = ConceptSet.build([{"text": "nudity", "kind": kind}], ["a red car"])
    W_orig = kv_weights(xl_pipe.unet)
    # weights after epoch k (0 = the UCE stage), the anchor of epoch k + 1
    after = [{n: w.double() for n, w in RECE(epochs=k).fit(model, concepts).weights.items()} for k in range(3)]
    edit = RECE(epochs=2).fit(model, concepts)
    c = prompt_rows(xl_pipe, ["nudity"])[0]  # all 77 rows of the bare word
    G = prompt_rows(xl_pipe, [" " if kind == "explicit" else "art"])[0]
    R = prompt_rows(xl_pipe, ["", "a red car"]).reshape(-1, c.shape[1])  # '' is always preserved
    for epoch in (1, 2):
        current, c_adv = after[epoch - 1], edit.extras[f"rece/embeddings/epoch{epoch}"][0].double()
        # derive: c' minimises sum_l ||W'_l c' - W_l c||^2 + lambda_reg ||c'||^2 over all 140 (here 16) K/V matrices:
        # its gradient, sum_l W'_l^T (W'_l c' - W_l c) + lambda_reg c', vanishes (row form below)
        grad = sum((c_adv @ current[n].T - c @ W.T) @ current[n] for n, W in W_orig.items()) + lambda_reg * c_adv
        scale = sum((c @ W.T) @ current[n] for n, W in W_orig.items())
        assert grad.norm() < 1e-6 * scale.norm(), f"epoch {epoch}: derivation"  # measured ~3e-8 (c' kept in fp32)
        # erase: a UCE edit of c' -> guide rows, anchored to the current weights (lam 0.1, s_e 1, s_p 0.1)
        final = edit.weights if epoch == 2 else after[1]
        eye = torch.eye(c.shape[1], dtype=torch.float64)
        for name in W_orig:
            lhs = final[name].double() @ (0.1 * eye + c_adv.T @ c_adv + 0.1 * R.T @ R)
            rhs = current[name] @ (0.1 * eye + G.T @ c_adv + 0.1 * R.T @ R)
            assert (lhs - rhs).norm() < 1e-6 * rhs.norm(), f"epoch {epoch}: erase {name}"  # measured ~5e-8
