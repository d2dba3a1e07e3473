"""ESD: which tensors each variant trains, that training lowers the negative-guidance loss, and exact resume."""

from __future__ import annotations

import pytest
import torch
from helpers import sample_image

from erasekit.concepts import ConceptSet
from erasekit.edits import Edit
from erasekit.errors import ConfigError
from erasekit.methods import ESD
from erasekit.methods.esd import trainable_names
from erasekit.methods.training import (
    NegativeGuidanceObjective,
    TrainingConfig,
    autocast,
    objective_value,
    step_generator,
)
from erasekit.models import ModelAdapter, load_pipeline

FAST = {"sampling_steps": 4, "lr": 1e-3, "progress": False}
CONCEPTS = ConceptSet.build(["dog"], preserve=["cat"])


def mean_loss(base, edited) -> float:
    return objective_value(ModelAdapter(base), edited, [("dog", "")], TrainingConfig(**FAST))


def test_esd_x_trains_exactly_the_cross_attention_tensors(tiny_pipe, tiny_model):
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    edit = ESD(steps=3, train_method="x", **FAST).fit(tiny_model, CONCEPTS)
    xattn = {n for n in before if ".attn2." in n}
    assert set(edit.weights) == xattn
    assert all(not torch.equal(edit.weights[n], before[n]) for n in edit.weights if n.endswith("to_k.weight"))
    after = tiny_pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fit must leave the pipeline unchanged"


def test_esd_u_trains_everything_but_cross_attention_and_norms(tiny_model):
    names = trainable_names(tiny_model, "u")
    assert names and not any(".attn2." in n for n in names)
    assert not any("norm" in n.split(".")[-2] for n in names)
    assert "conv_in.weight" in names and "time_embedding.linear_1.weight" in names
    strict = trainable_names(tiny_model, "x-strict")
    assert strict and all(n.split(".")[-2] in ("to_k", "to_v") for n in strict)
    assert set(trainable_names(tiny_model, "full")) == set(names) | set(trainable_names(tiny_model, "x"))


def test_esd_training_lowers_the_negative_guidance_loss(tiny_path):
    base, edited = load_pipeline(tiny_path), load_pipeline(tiny_path)
    before = mean_loss(base, edited)
    edit = ESD(steps=10, train_method="x", **{**FAST, "lr": 3e-4}).fit(ModelAdapter(base), ConceptSet.build(["dog"]))
    edit.apply(edited)
    after = mean_loss(base, edited)
    assert after < 0.6 * before


def test_esd_resumed_run_ends_with_identical_weights(tiny_model, tmp_path):
    straight = ESD(steps=4, work_dir=str(tmp_path / "a"), checkpoint_every=1, **FAST).fit(tiny_model, CONCEPTS)
    ESD(steps=2, work_dir=str(tmp_path / "b"), **FAST).fit(tiny_model, CONCEPTS)
    resumed = ESD(steps=4, work_dir=str(tmp_path / "b"), **FAST).fit(tiny_model, CONCEPTS)
    assert resumed.log["resumed_from"] == 2
    assert all(torch.equal(straight.weights[n], resumed.weights[n]) for n in straight.weights)
    with pytest.raises(ConfigError, match="other settings"):
        ESD(steps=4, work_dir=str(tmp_path / "b"), **{**FAST, "lr": 2e-3}).fit(tiny_model, CONCEPTS)


def test_esd_is_deterministic_for_a_seed(tiny_model):
    a = ESD(steps=2, seed=3, **FAST).fit(tiny_model, CONCEPTS)
    b = ESD(steps=2, seed=3, **FAST).fit(tiny_model, CONCEPTS)
    assert all(torch.equal(a.weights[n], b.weights[n]) for n in a.weights)


def test_esd_rejects_bad_settings():
    with pytest.raises(ConfigError, match="steps"):
        ESD(steps=0)
    with pytest.raises(ConfigError, match="train_method"):
        ESD(train_method="xattn")
    with pytest.raises(ConfigError, match="negative_guidance"):
        ESD(negative_guidance=-1.0)
    with pytest.raises(ConfigError, match=r"esd params\.sampling_steps: must be > 0, got 0"):
        ESD(sampling_steps=0)


def test_esd_world_preset_is_the_cpu_recipe_under_the_users_values():
    assert (ESD(preset="world").settings().steps, ESD(preset="world").settings().lr) == (150, 2e-4)
    assert ESD(preset="world").settings().sampling_steps == 20
    assert ESD(preset="world", steps=7).settings().steps == 7
    assert ESD().settings().sampling_steps == 50


def test_auto_mixed_precision_is_off_on_cpu():
    with autocast(torch.device("cpu"), "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("spec", ["erasekit:tiny-xl", "erasekit:tiny-sd2"])
def test_esd_erases_on_sdxl_and_sd2_and_the_edit_round_trips_exactly(spec, tmp_path):
    base, pipe = load_pipeline(spec), load_pipeline(spec)
    model = ModelAdapter(pipe)
    reference, before = sample_image(pipe), mean_loss(base, pipe)
    edit = ESD(steps=10, train_method="x", **{**FAST, "lr": 1e-4}).fit(model, ConceptSet.build(["dog"]))
    assert edit.info["family"] == model.family and set(edit.weights) == set(trainable_names(model, "x"))
    assert (sample_image(pipe) == reference).all(), "fit must leave the pipeline unchanged"
    edit.apply(pipe)
    erased = sample_image(pipe)
    assert mean_loss(base, pipe) < 0.7 * before and not (erased == reference).all()
    edit.remove(pipe)
    assert (sample_image(pipe) == reference).all()
    Edit.load(edit.save(tmp_path / "esd.safetensors")).apply(pipe)
    assert (sample_image(pipe) == erased).all()


def test_negative_guidance_on_velocities_is_the_velocity_of_the_noise_target():
    """On a v-prediction model the targets are the teacher's velocities; at a fixed x_t a velocity is affine in the
    noise, v = (eps - sigma x_t) / alpha, and the target's coefficients sum to one, so the loss is the noise-space
    loss weighted by 1 / alpha_t^2 (docs/methods/esd.md, "SDXL and SD2.x")."""
    base, other = ModelAdapter(load_pipeline("erasekit:tiny-sd2")), ModelAdapter(load_pipeline("erasekit:tiny-sd2-1"))
    cfg = TrainingConfig(sampling_steps=1, progress=False)  # depth 0: t is the first DDIM timestep
    velocity = NegativeGuidanceObjective(base, other.denoise, base.denoise, [("dog", "")], [], cfg)
    t = velocity.scheduler.timesteps[0]
    alpha, sigma = velocity.scheduler.alphas_cumprod[t].sqrt(), (1 - velocity.scheduler.alphas_cumprod[t]).sqrt()

    def as_noise(denoise):
        return lambda x, t, cond: alpha * denoise(x, t, cond) + sigma * x

    noise = NegativeGuidanceObjective(base, as_noise(other.denoise), as_noise(base.denoise), [("dog", "")], [], cfg)
    with torch.no_grad():
        for draw in range(3):
            v_loss, eps_loss = velocity.loss(step_generator(0, draw)), noise.loss(step_generator(0, draw))
            torch.testing.assert_close(v_loss, eps_loss / alpha**2, rtol=1e-4, atol=0)


def test_esd_sdxl_preset_is_the_authors_sdxl_recipe():
    cfg = ESD(preset="sdxl").settings()
    assert (cfg.train_method, cfg.lr, cfg.start_guidance, cfg.negative_guidance, cfg.steps) == ("x", 2e-4, 2, 1, 200)
    assert cfg.gradient_checkpointing
    assert ESD(preset="sdxl", lr=1e-4).settings().lr == 1e-4


@pytest.mark.parametrize("spec", ["erasekit:tiny-flux", "erasekit:tiny-sd3"])
def test_esd_on_flow_transformers_trains_the_text_stream_and_lowers_the_flow_loss(spec, tmp_path):
    """FLUX / SD3: ESD-x trains the text stream's attention projections of the joint blocks (``add_*``), the trajectory
    is flow-matching Euler, and the negative-guidance loss on velocities falls; the edit round-trips exactly."""
    fast = {**FAST, "image_size": 16}
    base, pipe = load_pipeline(spec), load_pipeline(spec)
    model = ModelAdapter(pipe)
    loss = lambda: objective_value(ModelAdapter(base), pipe, [("dog", "")], TrainingConfig(**fast))  # noqa: E731
    before = loss()
    edit = ESD(steps=10, train_method="x", **{**fast, "lr": 1e-3}).fit(model, ConceptSet.build(["dog"]))
    names = set(trainable_names(model, "x"))
    assert set(edit.weights) == names and names and all(".attn.add_" in n or ".to_add_out." in n for n in names)
    assert set(trainable_names(model, "x-strict")) < names
    edit.apply(pipe)
    assert loss() < 0.7 * before
    edit.remove(pipe)
    assert loss() == pytest.approx(before, abs=0.0)
    Edit.load(edit.save(tmp_path / "esd.safetensors")).apply(pipe)
    assert loss() < 0.7 * before
