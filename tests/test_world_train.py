"""World training: a tiny config trains, checkpoints, resumes to the same weights, and exports a pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from erasekit.errors import ConfigError
from erasekit.world.models import Architecture
from erasekit.world.train import WorldTrainConfig, WorldTrainer

TINY = Architecture(vae_channels=(8, 8, 8), unet_channels=(8, 16), text_hidden=8, text_layers=1, text_heads=2,
                    norm_groups=4)  # fmt: skip


def _config(**kw) -> WorldTrainConfig:
    base = dict(n_images=64, vae_steps=4, vae_batch=4, steps=4, batch=4, checkpoint_every=2, arch=TINY)
    return WorldTrainConfig(**{**base, **kw})


def _silent(_msg: str) -> None:
    pass


def test_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    whole = WorldTrainer(tmp_path / "whole", _config(), log=_silent)
    whole.run()
    part = WorldTrainer(tmp_path / "part", _config(steps=2), log=_silent)
    part.run()
    assert part.summary()["diffusion_step"] == 2
    resumed = WorldTrainer(tmp_path / "part", _config(), log=_silent)
    resumed.run()
    a, b = whole.load_diffusion()[0].state_dict(), resumed.load_diffusion()[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_export_writes_a_standard_pipeline_with_training_record(tmp_path):
    trainer = WorldTrainer(tmp_path / "run", _config(), log=_silent)
    trainer.run(out=tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a car", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    record = json.loads((tmp_path / "pipe" / "training.json").read_text())
    assert record["diffusion_step"] == 4 and record["config"]["seed"] == 0


def test_changing_the_config_of_a_run_directory_is_refused(tmp_path):
    WorldTrainer(tmp_path / "run", _config(), log=_silent).run()
    with pytest.raises(ConfigError, match="another config"):
        WorldTrainer(tmp_path / "run", _config(lr=1e-2), log=_silent).run()


def test_non_positive_hyper_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="steps"):
        _config(steps=0)
