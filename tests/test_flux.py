"""FLUX.1: the adapter reads what ``FluxPipeline.encode_prompt`` gives; UCE, RECE and SPEED edit the two maps text
enters through (``context_embedder`` on T5's rows, the pooled CLIP vector's linear map) as their closed forms say,
keeping the biases; edits save, load, apply, remove and export exactly; methods without a FLUX form refuse it in one
line.

Expected values come from diffusers itself (``encode_prompt``, the modules found by name) and closed forms written out
with an explicit inverse, as in ``test_sdxl_closed_forms.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
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


@pytest.fixture(scope="module")
def flux_path(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-flux", family="flux")


@pytest.fixture(scope="module")
def pipe(flux_path):
    """Nothing here modifies it: fits leave the model as it was, applied edits are removed."""
    return load_pipeline(flux_path)


def sample(pipe, prompt: str = "a photo of a dog") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, height=16, width=16, generator=generator, output_type="np",
                max_sequence_length=512).images  # fmt: skip


@torch.no_grad()  # as the pipeline runs (with gradients, attention takes another kernel: rows differ by ~1e-5)
def encoded(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 T5 rows ``[n, 512, d]`` and pooled CLIP vectors ``[n, p]``, from diffusers' ``encode_prompt``."""
    rows, pooled = [], []
    for text in texts:
        r, p, _ = pipe.encode_prompt(prompt=text, prompt_2=None, max_sequence_length=512)
        rows.append(r[0].detach().double())
        pooled.append(p[0].detach().double())
    return torch.stack(rows), torch.stack(pooled)


def last_word(pipe, text: str) -> int:
    """T5 has no start token: the last word piece sits at (number of ids - 2), the end token after it."""
    return max(len(pipe.tokenizer_2(text).input_ids) - 2, 0)


def closed_form(W_old, C, G, R, s_p: float) -> torch.Tensor:
    eye = torch.eye(C.shape[1], dtype=torch.float64)
    target = LAM * eye + S_E * G.T @ C + s_p * R.T @ R
    return W_old @ target @ torch.linalg.inv(LAM * eye + S_E * C.T @ C + s_p * R.T @ R)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------------------------------- adapter
def test_the_adapter_reads_t5_rows_and_the_pooled_clip_vector_as_the_pipeline_does(pipe):
    model = ModelAdapter(pipe)
    assert model.family == "flux" and model.embedding_dim == 40 and model.max_length == 512
    texts = ["a photo of a dog", ""]
    rows, pooled = encoded(pipe, texts)
    cond = model.conditioning(texts)
    assert torch.equal(cond.hidden.double(), rows) and torch.equal(cond.pooled.double(), pooled)
    where = model.token_positions("a photo of a dog", "dog")
    assert where.phrase == [4] and where.eos == 5 and model.last_word_index("dog") == last_word(pipe, "dog") == 0
    assert set(model.text_projections()) == {"context_embedder.weight"}
    assert set(model.pooled_projections()) == {"time_text_embed.text_embedder.linear_1.weight"}
    with pytest.raises(ModelLayoutError, match="no cross-attention layers"):
        model.layers  # noqa: B018


# ------------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("policy", ["uce_2025", "uce_legacy"])
def test_uce_equals_the_closed_form_on_both_maps_and_keeps_the_biases(pipe, policy):
    texts = [ERASED, GUIDE, "", *PRESERVED]
    rows, pooled = encoded(pipe, texts)
    by_text = dict(zip(texts, rows, strict=True))
    preserve = ["", *PRESERVED]  # legacy UCE always preserves the empty prompt
    s_p = max(0.1, 1 / len(preserve))
    ic, ig = last_word(pipe, ERASED), last_word(pipe, GUIDE)
    if policy == "uce_2025":
        C, G = by_text[ERASED][ic : ic + 1], by_text[GUIDE][ig : ig + 1]
        R = torch.stack([by_text[t][last_word(pipe, t)] for t in preserve])
    else:  # the concept's last word and every row after it, paired with the guide's
        n = 512 - max(ic, ig)
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
    c, g = rows[0, last_word(pipe, ERASED)].float(), rows[1, last_word(pipe, GUIDE)].float()
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
    kept = torch.stack([rows[i, model.last_word_index(t)] for i, t in enumerate(PRESERVED)])
    erased = rows[-1, model.last_word_index(ERASED)][None]
    W, W_new = model.context_embedder.weight.detach(), edit.weights["context_embedder.weight"]
    scale = (kept @ W.T).abs().max()
    assert (kept @ W_new.T - kept @ W.T).abs().max() < 1e-5 * scale
    assert (erased @ W_new.T - erased @ W.T).abs().max() > 1e-2 * scale


def test_rece_runs_its_epochs_on_flux_and_edits_both_maps(pipe):
    edit = erasekit.erase(pipe, [{"text": ERASED, "kind": "object"}], method="rece", preserve=PRESERVED)
    assert set(edit.weights) == {"context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"}
    assert edit.info["epochs_run"] >= 1 and edit.extras["rece/embeddings/epoch1"].shape[1:] == (512, 40)


# ------------------------------------------------------------------------------------------------- artifacts
def test_an_edit_saves_loads_applies_removes_and_exports_exactly(pipe, flux_path, tmp_path):
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    plain = sample(pipe)
    path = erasekit.erase(pipe, [ERASED], method="uce", preserve=PRESERVED).save(tmp_path / "dog.safetensors")
    edit = erasekit.load_edit(pipe, path)
    assert edit.info["family"] == "flux"
    erased = sample(pipe)
    assert not np.array_equal(erased, plain)
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", "--edit", str(path), "--model", str(flux_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    exported = FluxPipeline.from_pretrained(out)
    exported.set_progress_bar_config(disable=True)
    assert np.array_equal(sample(exported), erased)
    edit.remove(pipe)
    assert all(torch.equal(pipe.transformer.state_dict()[k], v) for k, v in before.items())
    assert np.array_equal(sample(pipe), plain)


def test_an_sd_edit_is_refused_by_a_flux_pipeline(pipe, tmp_path):
    sd_edit = erasekit.erase("erasekit:tiny", [ERASED], method="uce").save(tmp_path / "sd.safetensors")
    with pytest.raises(erasekit.errors.BaseModelMismatchError, match="FLUX"):
        erasekit.load_edit(pipe, sd_edit)


@pytest.mark.parametrize("method", ["esd", "mace", "gloce", "dumo"])
def test_methods_without_a_flux_form_refuse_it_in_one_line(pipe, flux_path, tmp_path, method):
    with pytest.raises(ConfigError, match=f"{method} does not edit FLUX.1 models; methods that do: .*uce"):
        erasekit.erase(pipe, [ERASED], method=method)
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {flux_path}\nmethod: {method}\nconcepts: [{ERASED}]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["erase", str(config), "-o", str(out)])
    assert result.exit_code == 2 and "does not edit FLUX.1" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_a_lora_export_loads_with_diffusers_and_reproduces_the_edit_kohya_is_refused(pipe, flux_path, tmp_path):
    from erasekit.exports import export

    edit = erasekit.erase(pipe, [ERASED], method="uce", preserve=PRESERVED)
    path = tmp_path / "dog-lora.safetensors"
    export(edit, pipe, path, "lora", energy=1.0)
    fresh = load_pipeline(flux_path)
    fresh.load_lora_weights(str(path))
    plain = sample(pipe)
    edit.apply(pipe)
    erased = sample(pipe)
    edit.remove(pipe)
    assert np.abs(sample(fresh) - erased).max() < 1e-5 < np.abs(erased - plain).max()
    with pytest.raises(ConfigError, match="kohya: written for SD1.x, SD2.x and SDXL, not the 'flux' family"):
        export(edit, pipe, tmp_path / "kohya.safetensors", "lora", lora_format="kohya")
    assert not (tmp_path / "kohya.safetensors").exists()
