"""DuMo: the EPR is the UNet's encoder, zero-initialised residuals change nothing, training erases, edits round-trip."""

from __future__ import annotations

import pytest
import torch
from helpers import sample_image

from erasekit.concepts import ConceptSet
from erasekit.edits import Edit
from erasekit.errors import BaseModelMismatchError, ConfigError
from erasekit.methods.dumo.method import DuMo
from erasekit.methods.dumo.modules import TLMO, DuMoNetwork, PromptGate, attach_dumo, share_across_cfg_halves
from erasekit.methods.training import TrainingConfig, objective_value
from erasekit.models import ModelAdapter, load_pipeline

FAST = {"sampling_steps": 4, "lr": 3e-3, "tlmo_lr": 1e-2, "progress": False}
CONCEPTS = ConceptSet.build([{"text": "dog", "kind": "style"}], preserve=["cat"])


def mean_loss(base, edited) -> float:
    return objective_value(ModelAdapter(base), edited, [("dog", "")], TrainingConfig(sampling_steps=4))


SPEC = {"tlmo": "time_layer", "tlmo_buckets": 20, "num_train_timesteps": 1000, "gating": True, "facilitate_factor": 1.0}


def untrained_tensors(pipe) -> dict[str, torch.Tensor]:
    network = DuMoNetwork(pipe.unet, "time_layer", 20, 1000)
    return {f"network.{k}": v for k, v in network.state_dict().items()}


@pytest.mark.parametrize("spec", [None, "erasekit:tiny-xl"], ids=["sd1", "sdxl"])
def test_epr_taps_are_the_unets_skip_and_mid_features(tiny_path, spec):
    model = ModelAdapter(load_pipeline(spec or tiny_path))
    unet = model.unet
    network = DuMoNetwork(unet, "time_layer", 20, 1000)
    for conv in network.epr.zero_convs:  # identity instead of zero: the taps come out unchanged
        torch.nn.init.dirac_(conv.weight)
    seen: list[torch.Tensor] = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o))]
    hooks += [b.register_forward_hook(lambda m, i, o: seen.extend(o[1])) for b in unet.down_blocks]
    hooks.append(unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o)))
    x = torch.randn(2, 4, 8, 8)
    kwargs = model.unet_kwargs(model.conditioning(["a dog", ""]), x)  # SDXL: pooled + size ids too
    with torch.no_grad():
        unet(x, 321, **kwargs)
        down, mid = network.residuals(x, 321, **kwargs)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(down) + 1 == 5
    for ours, theirs in zip([*down, mid], seen, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gating", [False, True])
def test_zero_initialised_residuals_leave_the_pipeline_output_unchanged(tiny_pipe, tiny_model, gating):
    reference = sample_image(tiny_pipe)
    tensors = untrained_tensors(tiny_pipe)
    tensors["gate.embeddings"] = tiny_model.encode(["dog"])
    detach = attach_dumo(tiny_pipe, tensors, {**SPEC, "gating": gating, "gate_tokens": [tiny_model.word_tokens("dog")]})
    calls = []
    probe = tiny_pipe.unet.register_forward_pre_hook(
        lambda m, a, k: calls.append(k.get("mid_block_additional_residual")), with_kwargs=True
    )
    attached = sample_image(tiny_pipe)
    probe.remove()
    detach()
    assert calls and all(c is not None and not c.any() for c in calls), "the residuals must be there, and zero"
    assert (attached == reference).all()
    assert (sample_image(tiny_pipe) == reference).all()


def test_tlmo_indexes_ddpm_timesteps_in_buckets_of_50():
    tlmo = TLMO(13, "time_layer", 20, 1000)
    with torch.no_grad():
        tlmo.scale.copy_(torch.arange(20.0)[:, None].expand(20, 13))
    t = torch.tensor([0.0, 49.0, 50.0, 999.0, 1000.0])
    assert tlmo(t)[:, 0].tolist() == [0.0, 0.0, 1.0, 19.0, 19.0]
    assert tuple(TLMO(13, "time", 20, 1000).scale.shape) == (20, 1)
    assert tuple(TLMO(13, "layer", 20, 1000)(t).shape) == (5, 13)


def test_prompt_gate_is_one_for_the_concept_and_lower_for_other_prompts(tiny_model):
    gate = PromptGate(tiny_model.encode(["dog"]), [tiny_model.word_tokens("dog")], 1.0)
    tok = tiny_model.tokenizer
    specials = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    texts = ["a photo of a dog", "a red car"]
    rho = gate.rho(tiny_model.encode(texts), gate.tokenuni(tiny_model.tokenize(texts), specials))
    assert rho[0] == pytest.approx(1.0) and rho[1] < 1.0
    # a CFG batch [negatives; prompts]: each prompt's rho also scales its own negative half, never another prompt's
    shared = share_across_cfg_halves(torch.tensor([0.3, 0.2, 1.0, 0.5]))
    assert shared.tolist() == [1.0, 0.5, 1.0, 0.5]


def test_dumo_training_lowers_the_loss_through_the_attached_edit(tiny_path):
    base, edited = load_pipeline(tiny_path), load_pipeline(tiny_path)
    before = mean_loss(base, edited)
    edit = DuMo(steps=12, preserve_weight=0.0, gating=False, **{**FAST, "lr": 1e-3}).fit(
        ModelAdapter(base), ConceptSet.build(["dog"])
    )
    edit.apply(edited)  # the student is now the pipeline's own UNet call, with the EPR hook adding residuals
    after = mean_loss(base, edited)
    assert after < 0.6 * before


def test_dumo_edit_applies_removes_and_round_trips_exactly(tiny_path, other_tiny_path, tmp_path):
    pipe = load_pipeline(tiny_path)
    reference = sample_image(pipe)
    edit = DuMo(steps=3, **FAST).fit(ModelAdapter(pipe), CONCEPTS)
    assert edit.weights == {} and edit.module_kind == "dumo"
    edit.apply(pipe)
    erased = sample_image(pipe)
    assert not (erased == reference).all()
    edit.remove(pipe)
    assert (sample_image(pipe) == reference).all()
    loaded = Edit.load(edit.save(tmp_path / "dumo.safetensors"))
    loaded.apply(pipe)
    assert (sample_image(pipe) == erased).all()
    with pytest.raises(BaseModelMismatchError):
        loaded.apply(load_pipeline(other_tiny_path))


def test_dumo_resumed_run_ends_with_identical_network(tiny_model, tmp_path):
    straight = DuMo(steps=4, work_dir=str(tmp_path / "a"), **FAST).fit(tiny_model, CONCEPTS)
    DuMo(steps=2, work_dir=str(tmp_path / "b"), **FAST).fit(tiny_model, CONCEPTS)
    resumed = DuMo(steps=4, work_dir=str(tmp_path / "b"), **FAST).fit(tiny_model, CONCEPTS)
    assert resumed.log["resumed_from"] == 2
    assert set(straight.modules) == set(resumed.modules)
    assert all(torch.equal(straight.modules[n], resumed.modules[n]) for n in straight.modules)


def test_tlmo_none_keeps_the_table_fixed(tiny_model):
    edit = DuMo(steps=3, tlmo="none", **FAST).fit(tiny_model, CONCEPTS)
    assert edit.modules["network.tlmo.scale"].tolist() == [[1.0]]
    learnt = DuMo(steps=3, **FAST).fit(tiny_model, CONCEPTS).modules["network.tlmo.scale"]
    assert learnt.shape == (20, 5) and not (learnt == 1).all()


def test_dumo_rejects_bad_settings():
    with pytest.raises(ConfigError, match="tlmo"):
        DuMo(tlmo="spatial")
    with pytest.raises(ConfigError, match="preserve_weight"):
        DuMo(preserve_weight=-1.0)
    with pytest.raises(ConfigError, match=r"dumo params\.tlmo_buckets: must be > 0, got 0"):
        DuMo(tlmo_buckets=0)


def test_dumo_world_preset_is_the_cpu_recipe_under_the_users_values():
    cfg = DuMo(preset="world").settings()
    assert (cfg.steps, cfg.lr, cfg.zero_conv_lr, cfg.tlmo_lr) == (200, 1e-4, 1e-3, 1e-2)
    assert (cfg.sampling_steps, cfg.negative_guidance) == (20, 4.0)
    assert DuMo(preset="world", negative_guidance=2.0).settings().negative_guidance == 2.0
    assert DuMo().settings().sampling_steps == 50


def test_dumo_on_sdxl_starts_exact_erases_and_round_trips_exactly(tmp_path):
    spec = "erasekit:tiny-xl"
    base, pipe = load_pipeline(spec), load_pipeline(spec)
    model = ModelAdapter(pipe)
    reference, before = sample_image(pipe), mean_loss(base, pipe)
    tensors = untrained_tensors(pipe)
    tensors["gate.embeddings"] = model.encode(["dog"])
    detach = attach_dumo(pipe, tensors, {**SPEC, "gate_tokens": [model.word_tokens("dog")]})
    assert (sample_image(pipe) == reference).all(), "an untrained DuMo must not change SDXL's output"
    detach()
    edit = DuMo(steps=12, preserve_weight=0.0, gating=False, **{**FAST, "lr": 3e-4}).fit(
        model, ConceptSet.build(["dog"])
    )
    assert edit.info["family"] == "sdxl" and len(edit.module_spec["taps"]) == 5
    edit.apply(pipe)
    erased = sample_image(pipe)
    assert mean_loss(base, pipe) < 0.7 * before and not (erased == reference).all()
    edit.remove(pipe)
    assert (sample_image(pipe) == reference).all()
    Edit.load(edit.save(tmp_path / "dumo.safetensors")).apply(pipe)
    assert (sample_image(pipe) == erased).all()


@pytest.mark.parametrize("spec", [None, "erasekit:tiny-xl"], ids=["sd1", "sdxl"])
def test_the_gate_reads_the_prompts_tokens_through_the_pipeline(tiny_path, spec, monkeypatch):
    """rho is 1 for a prompt holding the concept's tokens (tokenuni, recorded at the text encoder and matched to
    the UNet's rows: on SDXL by their first encoder's penultimate half) and below 1 for another prompt."""
    pipe = load_pipeline(spec or tiny_path)
    model = ModelAdapter(pipe)
    tensors = untrained_tensors(pipe)
    tensors["gate.embeddings"] = model.encode(["dog"])
    rhos: list[torch.Tensor] = []
    residuals = DuMoNetwork.residuals

    def recording(self, *args, rho=None, **kwargs):
        rhos.append(rho)
        return residuals(self, *args, rho=rho, **kwargs)

    monkeypatch.setattr(DuMoNetwork, "residuals", recording)
    detach = attach_dumo(pipe, tensors, {**SPEC, "gate_tokens": [model.word_tokens("dog")]})
    sample_image(pipe, "a photo of a dog")
    dog, rhos[:] = list(rhos), []
    sample_image(pipe, "a red car")
    detach()
    assert dog and all(r.tolist() == [1.0, 1.0] for r in dog)
    assert rhos and all((r < 1).all() for r in rhos)
