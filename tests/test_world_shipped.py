"""The shipped world: the pipeline loads as a standard StableDiffusionPipeline and draws, the classifiers judge
generator images correctly, and everything fits the 50 MB budget."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from erasekit.errors import ConfigError
from erasekit.world import HEADS, data_dir, generate, load_classifiers, pipeline_path
from erasekit.world.generator import FAMILIES


@pytest.fixture(scope="module")
def classifiers():
    return load_classifiers()


def test_shipped_pipeline_loads_and_draws_a_32px_image():
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path())
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.text_encoder.config.vocab_size == 49408 and pipe.tokenizer.model_max_length == 77
    assert any(name.endswith("attn2") for name, _ in pipe.unet.named_modules())
    out = pipe("a photo of a car", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert out[0].size == (32, 32)


def test_shipped_world_fits_the_weights_budget():
    total = sum(p.stat().st_size for p in data_dir().rglob("*") if p.is_file())
    assert total < 50 * 2**20


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "scene"])
def test_classifier_recognises_held_out_generator_images(classifiers, family):
    samples = [generate(family, 9_000_000 + s) for s in range(100)]
    preds = classifiers.predict([s.image for s in samples], family)
    accuracy = sum(p == s.labels[family] for p, s in zip(preds, samples, strict=True)) / len(samples)
    assert accuracy >= 0.9


def test_scene_heads_judge_each_side(classifiers):
    samples = [generate("scene", 9_000_000 + s) for s in range(100)]
    images = [s.image for s in samples]
    left, right = classifiers.predict(images, "scene_left"), classifiers.predict(images, "scene_right")
    pairs = zip(left, right, samples, strict=True)
    both = sum(a == s.labels["scene_left"] and b == s.labels["scene_right"] for a, b, s in pairs)
    assert both / len(samples) >= 0.8


def test_scores_are_probabilities_in_label_order(classifiers):
    images = [generate("explicit", 0, concept="shirtless").image, generate("object", 0).image]
    for head in HEADS:
        scores = classifiers.scores(images, head)
        assert scores.shape == (2, len(classifiers.labels(head)))
        assert torch.allclose(torch.from_numpy(scores.sum(axis=1)), torch.ones(2), atol=1e-5)
    assert classifiers.labels("explicit") == ("no", "yes")
    assert classifiers.predict(images[:1], "explicit") == ["yes"]


def test_unknown_head_is_a_config_error(classifiers):
    with pytest.raises(ConfigError, match="head"):
        classifiers.predict([generate("object", 0).image], "animal")


def test_classifier_features_put_one_family_close_to_itself_and_far_from_another(classifiers):
    from erasekit.eval.metrics.distribution import fid_from_features

    def feats(family: str, start: int):
        return classifiers.features([generate(family, start + s).image for s in range(60)]).astype("float64")

    objects_a, objects_b, styles = feats("object", 0), feats("object", 1000), feats("style", 0)
    assert objects_a.shape == (60, 256)
    assert fid_from_features(objects_a, objects_b) < 0.2 * fid_from_features(objects_a, styles)
