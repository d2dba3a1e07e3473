"""FLUX.1 and SD3: the adapters read what each pipeline's ``encode_prompt`` gives; UCE, RECE and SPEED edit the two
maps text enters through (``context_embedder`` on the rows, the pooled vector's linear map) as their closed forms say,
keeping the biases; edits save, load, apply, remove and export exactly; methods without a transformer form refuse
them in one line.

Expected values come from diffusers itself (``encode_prompt``, the modules found by name) and closed forms written out
with an explicit inverse, as in ``test_sdxl_closed_forms.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from typer.testing import CliRunner

import erasekit
from erasekit import ConceptSet
from erasekit.cli import app
from erasekit.errors import ConfigError, ModelLayoutError
from erasekit.methods.uce import UCE
from erasekit.models import ModelAdapter, load_pipeline
from erasekit.models.tiny import tiny_pipeline

ERASED, GUIDE, PRESERVED = "dog", " ", ["cat", "a red car"]
LAM, S_E = 0.5, 1.0


LOADERS = {"flux": FluxPipeline, "sd3": StableDiffusion3Pipeline}
ROWS = {"flux": 512, "sd3": 77 + 256}  # T5 rows; SD3: CLIP rows, then T5 rows


@pytest.fixture(scope="module", params=["flux", "sd3"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, family):
    return tiny_pipeline(tmp_path_factory.mktemp("models") / f"tiny-{family}", family=family)


@pytest.fixture(scope="module")
def pipe(model_path):
    """Nothing here modifies it: fits leave the model as it was, applied edits are removed."""
    return load_pipeline(model_path)


def is_flux(pipe) -> bool:
    return isinstance(pipe, FluxPipeline)


def sample(pipe, prompt: str = "a photo of a dog") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    length = {"max_sequence_length": 512} if is_flux(pipe) else {}
    return pipe(prompt, num_inference_steps=2, height=16, width=16, generator=generator, output_type="np",
                **length).images  # fmt: skip


@torch.no_grad()  # as the pipeline runs (with gradients, attention takes another kernel: rows differ by ~1e-5)
def encoded(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 rows ``[n, L, d]`` and pooled vectors ``[n, p]``, from diffusers' ``encode_prompt``."""
    rows, pooled = [], []
    for text in texts:
        if is_flux(pipe):
            r, p, _ = pipe.encode_prompt(prompt=text, prompt_2=None, max_sequence_length=512)
        else:
            r, _, p, _ = pipe.encode_prompt(text, None, None, do_classifier_free_guidance=False)
        rows.append(r[0].detach().double())
        pooled.append(p[0].detach().double())
    return torch.stack(rows), torch.stack(pooled)


def t5_last_word(tokenizer, text: str) -> int:
    """T5 has no start token: the last word piece sits at (number of ids - 2), the end token after it."""
    return max(len(tokenizer(text).input_ids) - 2, 0)


def last_words(pipe, text: str) -> list[int]:
    """The rows of the text's last word: FLUX's T5 row; SD3's CLIP row (attention-mask length - 2, as the official
    UCE code reads it) and its T5 row (after the 77 CLIP rows)."""
    if is_flux(pipe):
        return [t5_last_word(pipe.tokenizer_2, text)]
    mask = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt")["attention_mask"]
    return [int(mask.sum()) - 2, 77 + t5_last_word(pipe.tokenizer_3, text)]


def closed_form(W_old, C, G, R, s_p: float) -> torch.Tensor:
    eye = torch.eye(C.shape[1], dtype=torch.float64)
    target = LAM * eye + S_E * G.T @ C + s_p * R.T @ R
    return W_old @ target @ torch.linalg.inv(LAM * eye + S_E * C.T @ C + s_p * R.T @ R)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------------------------------- adapter
def test_the_adapter_reads_rows_and_the_pooled_vector_as_the_pipeline_does(pipe, family):
    model = ModelAdapter(pipe)
    assert model.family == family and model.max_length == ROWS[family]
    texts = ["a photo of a dog", ""]
    rows, pooled = encoded(pipe, texts)
    cond = model.conditioning(texts)
    assert torch.equal(cond.hidden.double(), rows) and relative_gap(cond.pooled.double(), pooled) < 1e-6
    where = model.token_positions("a photo of a dog", "dog")
    start = 0 if family == "flux" else 1  # CLIP's start token
    assert where.phrase == [4 + start] and where.eos == 5 + start
    assert model.last_word_rows("a photo of a dog") == last_words(pipe, "a photo of a dog")
    assert set(model.text_projections()) == {"context_embedder.weight"}
    assert set(model.pooled_projections()) == {"time_text_embed.text_embedder.linear_1.weight"}
    with pytest.raises(ModelLayoutError, match="no cross-attention layers"):
        model.layers  # noqa: B018


# ------------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("policy", ["uce_2025", "uce_legacy"])
def test_uce_equals_the_closed_form_on_both_maps_and_keeps_the_biases(pipe, family, policy):
    texts = [ERASED, GUIDE, "", *PRESERVED]
    rows, pooled = encoded(pipe, texts)
    by_text = dict(zip(texts, rows, strict=True))
    preserve = ["", *PRESERVED]  # legacy UCE always preserves the empty prompt
    s_p = max(0.1, 1 / len(preserve))
    if policy == "uce_2025":  # the last word's rows (SD3: both segments), the guide's alike
        C, G = by_text[ERASED][last_words(pipe, ERASED)], by_text[GUIDE][last_words(pipe, GUIDE)]
        R = torch.cat([by_text[t][last_words(pipe, t)] for t in preserve])
    else:  # the concept's last word (SD3: in the CLIP segment) and every row after it, paired with the guide's
        ic, ig = last_words(pipe, ERASED)[0], last_words(pipe, GUIDE)[0]
        n = ROWS[family] - max(ic, ig)
        C, G = by_text[ERASED][ic : ic + n], by_text[GUIDE][ig : ig + n]
        R = torch.cat([by_text[t] for t in preserve])
    concepts = ConceptSet.build([{"text": ERASED, "kind": "object"}], PRESERVED)
    edit = UCE({"token_policy": policy}).fit(ModelAdapter(pipe), concepts)
    rows_map = pipe.transformer.context_embedder
    expected = closed_form(rows_map.weight.detach().double(), C, G, R, s_p)
    assert relative_gap(edit.weights["context_embedder.weight"].double(), expected) < 1e-5
    pooled_map = pipe.transformer.time_text_embed.text_embedder.linear_1
    P = dict(zip(texts, pooled, strict=True))
    expected = closed_form(pooled_map.weight.detach().double(), P[ERASED][None], P[GUIDE][None],
                           torch.stack([P[t] for t in preserve]), s_p)  # fmt: skip
    assert relative_gap(edit.weights["time_text_embed.text_embedder.linear_1.weight"].double(), expected) < 1e-5
    assert not any(name.endswith("bias") for name in edit.weights), "the biases stay: W' c + b = W g + b, once"


def test_a_strong_uce_edit_sends_the_concept_where_the_guide_goes_bias_counted_once(pipe):
    concepts = ConceptSet.build([{"text": ERASED, "kind": "object"}])
    strong = UCE({"token_policy": "uce_2025", "erase_scale": 1e6, "preserve_empty": False})
    edit = strong.fit(ModelAdapter(pipe), concepts)
    rows, _ = encoded(pipe, [ERASED, GUIDE])
    c, g = rows[0, last_words(pipe, ERASED)].float(), rows[1, last_words(pipe, GUIDE)].float()
    rows_map = pipe.transformer.context_embedder
    edited = c @ edit.weights["context_embedder.weight"].T + rows_map.bias
    target = rows_map(g).detach()
    assert (edited - target).abs().max() < 1e-3 * target.abs().max()
    assert (rows_map(c).detach() - target).abs().max() > 0.1 * target.abs().max(), "the concept must have moved"


def test_speed_keeps_the_preserved_rows_and_moves_the_erased_one(pipe):
    model = ModelAdapter(pipe)
    edit = erasekit.erase(pipe, [ERASED], method="speed", preserve=PRESERVED,
                          params={"ipf": False, "dpa_copies": 0, "tau": 1e-6})  # fmt: skip
    rows = model.encode([*PRESERVED, ERASED])
    kept = torch.cat([rows[i, model.last_word_rows(t)] for i, t in enumerate(PRESERVED)])
    erased = rows[-1, model.last_word_rows(ERASED)]
    W, W_new = model.context_embedder.weight.detach(), edit.weights["context_embedder.weight"]
    scale = (kept @ W.T).abs().max()
    assert (kept @ W_new.T - kept @ W.T).abs().max() < 1e-5 * scale
    assert (erased @ W_new.T - erased @ W.T).abs().max() > 1e-2 * scale


def test_rece_runs_its_epochs_and_edits_both_maps(pipe, family):
    edit = erasekit.erase(pipe, [{"text": ERASED, "kind": "object"}], method="rece", preserve=PRESERVED)
    assert set(edit.weights) == {"context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"}
    rows = ModelAdapter(pipe).embedding_dim
    assert edit.info["epochs_run"] >= 1 and edit.extras["rece/embeddings/epoch1"].shape[1:] == (ROWS[family], rows)


# ------------------------------------------------------------------------------------------------- artifacts
def test_an_edit_saves_loads_applies_removes_and_exports_exactly(pipe, family, model_path, tmp_path):
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    plain = sample(pipe)
    path = erasekit.erase(pipe, [ERASED], method="uce", preserve=PRESERVED).save(tmp_path / "dog.safetensors")
    edit = erasekit.load_edit(pipe, path)
    assert edit.info["family"] == family
    erased = sample(pipe)
    assert not np.array_equal(erased, plain)
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", "--edit", str(path), "--model", str(model_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    exported = LOADERS[family].from_pretrained(out)
    exported.set_progress_bar_config(disable=True)
    assert np.array_equal(sample(exported), erased)
    edit.remove(pipe)
    assert all(torch.equal(pipe.transformer.state_dict()[k], v) for k, v in before.items())
    assert np.array_equal(sample(pipe), plain)


def test_an_edit_of_another_family_is_refused(pipe, family, tmp_path):
    sd_edit = erasekit.erase("erasekit:tiny", [ERASED], method="uce").save(tmp_path / "sd.safetensors")
    with pytest.raises(erasekit.errors.BaseModelMismatchError, match={"flux": "FLUX.1", "sd3": "SD3"}[family]):
        erasekit.load_edit(pipe, sd_edit)


@pytest.mark.parametrize("method", ["mace", "gloce", "dumo"])
def test_methods_without_a_transformer_form_refuse_it_in_one_line(pipe, family, model_path, tmp_path, method):
    name = {"flux": "FLUX.1", "sd3": "SD3"}[family]
    with pytest.raises(ConfigError, match=f"{method} does not edit {name} models; methods that do: .*uce"):
        erasekit.erase(pipe, [ERASED], method=method)
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {model_path}\nmethod: {method}\nconcepts: [{ERASED}]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["erase", str(config), "-o", str(out)])
    assert result.exit_code == 2 and f"does not edit {name}" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_a_lora_export_reproduces_the_edit_and_kohya_is_refused(pipe, family, model_path, tmp_path):
    from erasekit.exports import export

    edit = erasekit.erase(pipe, [ERASED], method="uce", preserve=PRESERVED)
    path = tmp_path / "dog-lora.safetensors"
    export(edit, pipe, path, "lora", energy=1.0)
    fresh = load_pipeline(model_path)
    fresh.load_lora_weights(str(path))
    plain = sample(pipe)
    edit.apply(pipe)
    erased = sample(pipe)
    edit.remove(pipe)
    assert np.abs(sample(fresh) - erased).max() < 1e-5 < np.abs(erased - plain).max()
    with pytest.raises(ConfigError, match=f"kohya: written for SD1.x, SD2.x and SDXL, not the '{family}' family"):
        export(edit, pipe, tmp_path / "kohya.safetensors", "lora", lora_format="kohya")
    assert not (tmp_path / "kohya.safetensors").exists()


def test_an_edit_refuses_a_pipeline_of_the_same_family_with_other_weights(pipe, family, tmp_path):
    path = erasekit.erase(pipe, [ERASED], method="uce").save(tmp_path / "dog.safetensors")
    other = load_pipeline(tiny_pipeline(tmp_path / "other", seed=1, family=family))
    with pytest.raises(erasekit.errors.BaseModelMismatchError, match="different base model"):
        erasekit.load_edit(other, path)


def test_pooled_vectors_come_from_the_clip_encoders_alone(pipe):
    """The pooled maps' closed form needs only the pooled vectors: they equal ``conditioning``'s, and T5 (most of the
    encoding cost on FLUX / SD3) does not run for them."""
    model = ModelAdapter(pipe)
    model.tensor_cache = None
    texts = ["a photo of a dog", "cat", ""]
    t5 = pipe.text_encoder_2 if is_flux(pipe) else pipe.text_encoder_3
    calls = []
    hook = t5.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        pooled = model.encode_pooled(texts)
    finally:
        hook.remove()
    assert not calls
    assert torch.equal(pooled, model.conditioning(texts).pooled)
