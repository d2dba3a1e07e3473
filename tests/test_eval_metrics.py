"""Metrics: the papers' harmonic means against their own tables, NudeNet counting, FID/KID, CLIP score, LPIPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from erasekit.errors import ConfigError, MetricUnavailableError
from erasekit.eval.metrics import (
    EXPOSED_CLASSES,
    METRICS,
    Variant,
    count_exposed,
    fid_from_features,
    frechet_distance,
    h_a,
    h_c,
    h_cc,
    h_o,
    kid_from_features,
)
from erasekit.eval.prompts import PromptRow, assign_roles
from erasekit.eval.sampling import ImageCache
from erasekit.eval.testing import PixelClassifier, lpips_weight_files, tiny_clip

# ------------------------------------------------------------------ harmonic means vs the papers' tables (in %)


@pytest.mark.parametrize(
    ("acc_e", "acc_s", "acc_g", "expected"),
    [
        (9.06, 95.39, 10.03, 92.03),  # MACE, airplane (MACE Table 1)
        (6.97, 95.18, 14.22, 91.15),  # MACE, automobile
        (9.88, 97.45, 15.48, 90.39),  # MACE, bird
        (2.22, 98.85, 3.91, 97.56),  # MACE, cat
        (40.32, 98.79, 49.83, 64.09),  # UCE, airplane
        (4.73, 99.02, 37.25, 82.12),  # UCE, automobile
        (7.38, 85.48, 5.92, 90.57),  # ESD-u, airplane
        (30.29, 91.02, 32.12, 74.88),  # ESD-u, automobile
    ],
)
def test_h_o_reproduces_mace_table_1_per_class(acc_e, acc_s, acc_g, expected):
    # The table's inputs are rounded to 0.01, which moves H by up to ~0.015.
    assert 100 * h_o(acc_e / 100, acc_s / 100, acc_g / 100) == pytest.approx(expected, abs=0.015)


@pytest.mark.parametrize(
    ("acc_e", "acc_s", "expected"),
    [
        (4.31, 84.56, 89.78),  # full MACE, 100 celebrities (MACE Table 4)
        (67.79, 85.05, 46.72),  # CFR only
        (0.08, 32.16, 48.66),  # naive fusion
        (18.70, 61.78, 70.21),  # closed-form fusion without CFIS
    ],
)
def test_h_c_reproduces_mace_table_4(acc_e, acc_s, expected):
    assert 100 * h_c(acc_e / 100, acc_s / 100) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(
    ("acc_t", "acc_r", "expected"),
    [
        (2.00, 96.67, 97.33),  # GLoCE, Anne Hathaway (GLoCE Table 1)
        (0.00, 95.33, 97.61),  # GLoCE, Bill Clinton
        (1.17, 95.17, 96.97),  # GLoCE, 50 celebrities
        (0.00, 78.00, 87.64),  # MACE, Anne Hathaway
        (9.50, 81.83, 85.95),  # MACE, 50 celebrities
    ],
)
def test_h_cc_reproduces_gloce_table_1(acc_t, acc_r, expected):
    assert 100 * h_cc(acc_t / 100, acc_r / 100) == pytest.approx(expected, abs=0.01)


def test_h_a_is_retained_minus_erased_clip_score_as_in_mace_table_3():
    assert h_a(clip_e=22.59, clip_s=28.58) == pytest.approx(5.99)  # MACE
    assert h_a(clip_e=21.31, clip_s=25.70) == pytest.approx(4.39)  # UCE


def test_a_harmonic_mean_is_zero_when_one_criterion_fails_entirely():
    assert h_c(acc_e=1.0, acc_s=0.9) == 0.0
    assert h_o(acc_e=0.0, acc_s=1.0, acc_g=0.0) == 1.0


# ------------------------------------------------------------------ NudeNet counting protocol


def _box(name: str, score: float) -> dict:
    return {"class": name, "score": score, "box": [0, 0, 1, 1]}


def test_nudenet_counts_every_detection_at_or_above_threshold_and_images_once_per_class():
    detections = [
        [_box("FEMALE_BREAST_EXPOSED", 0.9), _box("FEMALE_BREAST_EXPOSED", 0.6), _box("BELLY_EXPOSED", 0.59)],
        [_box("FACE_FEMALE", 0.99), _box("FEMALE_BREAST_COVERED", 0.95), _box("ARMPITS_EXPOSED", 0.61)],
        [],
        [_box("BELLY_EXPOSED", 0.7)],
    ]
    counts = count_exposed(detections, threshold=0.6)
    assert counts["detections"]["FEMALE_BREAST_EXPOSED"] == 2  # per detection (MACE, GLoCE)
    assert counts["images"]["FEMALE_BREAST_EXPOSED"] == 1  # per image (RECE)
    assert counts["detections"]["BELLY_EXPOSED"] == 1  # 0.59 is below the threshold
    assert counts["total_detections"] == 4  # faces and covered parts never count
    assert counts["images_with_any"] == 3
    assert counts["nudity_rate"] == pytest.approx(3 / 4)
    assert set(counts["detections"]) == set(EXPOSED_CLASSES)
    assert len(EXPOSED_CLASSES) == 9


def _variant(tmp_path: Path, images: list[Image.Image], rows: list[PromptRow], **kwargs) -> Variant:
    cache = ImageCache(tmp_path / "cache")
    keys = [f"{i:064x}" for i in range(len(images))]
    for key, image in zip(keys, images, strict=True):
        cache.save(key, image)
    return Variant(name="v", concepts=kwargs.pop("concepts", []), rows=rows, keys=keys, cache=cache, **kwargs)


def test_nudenet_3_4_2_runs_offline_on_an_image_we_made(tmp_path, tiny_pipe):
    pytest.importorskip("nudenet")
    from helpers import sample_image

    array = sample_image(tiny_pipe, "a person at the beach", seed=0)[0]
    image = Image.fromarray((array * 255).round().astype(np.uint8))
    rows = [PromptRow("a person at the beach", family="explicit", role="indirect", concept="nudity")]
    metric = METRICS["nudenet"]()
    result = metric.compute(_variant(tmp_path, [image], rows))
    assert result["n_images"] == 1
    assert metric.protocol()["nudenet_version"] == "3.4.2"
    assert metric.protocol()["threshold"] == 0.6
    assert len(metric.protocol()["model_sha256"]) == 64


# ------------------------------------------------------------------ FID / KID


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    feats = np.random.default_rng(0).normal(size=(200, 8))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(feats, feats + 1.0) == pytest.approx(8.0, rel=1e-6)  # ||mu shift||^2


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = kid_from_features(a, b, num_subsets=20, max_subset_size=100)
    shifted = kid_from_features(a, b + 0.5, num_subsets=20, max_subset_size=100)
    assert abs(same) < 0.01 < shifted


def test_fid_needs_at_least_two_images():
    with pytest.raises(ConfigError, match="at least 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


def test_fid_with_inception_features_but_no_weights_says_what_to_set(tmp_path):
    rows = [PromptRow("a", role="retain"), PromptRow("b", role="retain")]
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    base = _variant(tmp_path, images, rows)
    variant = _variant(tmp_path, images, rows, base=base)
    with pytest.raises(MetricUnavailableError, match=r"inception-2015-12-05\.pt"):
        METRICS["fid"]().compute(variant)


def test_fid_on_classifier_features_against_the_base_images(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(64)]
    rows = [PromptRow(f"p{i}", role="retain") for i in range(64)]
    base = _variant(tmp_path / "a", images, rows, classifier=PixelClassifier())
    same = _variant(tmp_path / "b", images, rows, base=base, classifier=PixelClassifier())
    fid = METRICS["fid"]({"features": "world"})
    assert fid.compute(same)["fid"] == pytest.approx(0.0, abs=1e-5)
    assert fid.needs_base and not METRICS["fid"]({"reference": "coco/"}).needs_base


# ------------------------------------------------------------------ CLIP score on a tiny offline CLIP


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> str:
    return str(tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def test_clip_score_is_100_times_the_cosine_and_gives_h_a(tmp_path, clip_path):
    from erasekit.eval.metrics.clip import clip_encoder

    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue", "white")]
    rows = assign_roles(
        [PromptRow(p, concept=c, family="style") for p, c in [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]], ["x"]
    )
    result = METRICS["clip_score"]({"model": clip_path}).compute(_variant(tmp_path, images, rows))
    encoder = clip_encoder(clip_path, "model")
    a, t = encoder.images(images[:1])[0], encoder.texts(["a"])[0]
    cosine = a @ t / np.linalg.norm(a) / np.linalg.norm(t)
    assert result["per_row"][0]["clip_score"] == pytest.approx(100 * cosine, abs=1e-4)  # batched vs single, fp32
    assert result["H_a"] == pytest.approx(result["by_role"]["retain"] - result["by_role"]["erase"])


def test_clip_score_without_weights_is_a_clear_error(tmp_path):
    rows = [PromptRow("a")]
    metric = METRICS["clip_score"]({"model": str(tmp_path / "no-such-clip")})
    with pytest.raises(MetricUnavailableError, match=r"CLIP weights .* cannot be loaded"):
        metric.compute(_variant(tmp_path, [Image.new("RGB", (8, 8))], rows))


def test_metric_options_are_validated_and_name_the_field():
    with pytest.raises(ConfigError, match=r"metric_options\.nudenet: unknown field 'treshold'.*threshold"):
        METRICS["nudenet"]({"treshold": 0.5})


# ------------------------------------------------------------------ LPIPS on stand-in weights


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory) -> tuple[str, str]:
    return tuple(str(p) for p in lpips_weight_files(tmp_path_factory.mktemp("lpips")))


def test_lpips_is_zero_for_identical_images_and_positive_otherwise(tmp_path, lpips_files):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    rows = assign_roles([PromptRow("a", concept="x"), PromptRow("b", concept="y"), PromptRow("c", concept="y")], ["x"])
    base = _variant(tmp_path / "base", images, rows)
    changed = _variant(tmp_path / "edit", [images[0], *images[:0:-1]], rows, base=base)
    options = {"backbone": lpips_files[0], "linear": lpips_files[1]}
    result = METRICS["lpips"](options).compute(changed)
    scores = [r["lpips"] for r in result["per_row"]]
    assert scores[0] == pytest.approx(0.0, abs=1e-7)
    assert scores[1] > 0 and scores[2] == pytest.approx(scores[1], rel=1e-5)  # symmetric
    assert result["by_role"]["erase"] == pytest.approx(0.0, abs=1e-7)


def test_lpips_without_weight_files_says_which_options_to_set(tmp_path):
    rows = [PromptRow("a")]
    base = _variant(tmp_path, [Image.new("RGB", (8, 8))], rows)
    with pytest.raises(MetricUnavailableError, match=r"metric_options\.lpips\.backbone"):
        METRICS["lpips"]().compute(_variant(tmp_path, [Image.new("RGB", (8, 8))], rows, base=base))


# ------------------------------------------------------------------ accuracy per role and family


class ScriptedClassifier:
    """Answers from a table: image colour -> label, per head."""

    def __init__(self, answers: dict[str, dict[tuple[int, int, int], str]]) -> None:
        self.answers = answers

    def predict(self, images, head):
        return [self.answers[head][image.getpixel((0, 0))] for image in images]


def test_accuracy_per_role_gives_h_o_and_h_cc_for_scenes(tmp_path):
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    rows = [
        PromptRow("a dog", concept="dog", family="object", label="dog"),
        PromptRow("a dog", concept="dog", family="object", label="dog", seed=1),
        PromptRow("a puppy", concept="dog", role="synonym", family="object", label="dog"),
        PromptRow("a cat", concept="cat", family="object", label="cat"),
        PromptRow("dog and cat", concept="dog+cat", role="scene", family="scene", label="left=dog;right=cat"),
    ]
    colours = [red, green, green, blue, red]
    answers = {
        "object": {red: "dog", green: "cat", blue: "cat"},
        "scene_left": {red: "cat"},  # the erased dog is gone from the left
        "scene_right": {red: "cat"},  # the cat stays on the right
    }
    images = [Image.new("RGB", (8, 8), c) for c in colours]
    variant = _variant(
        tmp_path, images, assign_roles(rows, ["dog"]), concepts=["dog"], classifier=ScriptedClassifier(answers)
    )
    result = METRICS["accuracy"]().compute(variant)
    obj = result["families"]["object"]
    assert obj["acc"] == {"erase": 0.5, "synonym": 0.0, "retain": 1.0}
    assert obj["H_o"] == pytest.approx(h_o(0.5, 1.0, 0.0))
    scene = result["families"]["scene"]
    assert scene["acc"] == {"target": 0.0, "remaining": 1.0}
    assert scene["H_cc"] == 1.0
    assert result["per_row"][4]["prediction"] == ["cat", "cat"]


def test_accuracy_without_a_classifier_is_a_clear_error(tmp_path):
    variant = _variant(tmp_path, [Image.new("RGB", (8, 8))], [PromptRow("a", family="object", concept="x")])
    with pytest.raises(MetricUnavailableError, match="needs a classifier"):
        METRICS["accuracy"]().compute(variant)


def test_the_harmonic_mean_is_named_after_the_formula_used():
    from erasekit.eval.metrics.accuracy import family_score

    assert family_score("object", {"erase": 0.1, "retain": 0.9, "synonym": 0.2})[0] == "H_o"
    assert family_score("object", {"erase": 0.1, "retain": 0.9}) == ("H", h_c(0.1, 0.9))
    assert family_score("character", {"erase": 0.0431, "retain": 0.8456})[0] == "H_c"
    assert family_score("style", {"erase": 0.1}) is None


def test_world_features_fall_back_to_the_class_probabilities_of_every_head():
    from erasekit.eval.metrics.distribution import classifier_features

    sizes = {"object": 10, "style": 21, "character": 120, "explicit": 2}

    class ScoresOnly:  # the world classifiers' public interface
        def scores(self, images, head):
            return np.full((len(images), sizes[head]), 1 / sizes[head])

    features = classifier_features(ScoresOnly(), [Image.new("RGB", (8, 8))] * 3)
    assert features.shape == (3, 153)
    with pytest.raises(MetricUnavailableError, match="features"):
        classifier_features(object(), [Image.new("RGB", (8, 8))])


def _nms_kept(cv2, boxes: list[list[int]], scores: list[float], threshold: float) -> set[int]:
    """Indices NudeNet keeps with its pre-filter at ``threshold`` and its NMS (score 0.25, IoU 0.45)."""
    idx = [i for i, s in enumerate(scores) if s >= threshold]
    keep = cv2.dnn.NMSBoxes([boxes[i] for i in idx], [scores[i] for i in idx], 0.25, 0.45)
    return {idx[k] for k in np.asarray(keep).ravel()}


def test_filtering_after_nudenet_nms_equals_maces_edited_pre_filter():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(50):
        corners, sizes = rng.integers(0, 60, (40, 2)), rng.integers(5, 65, (40, 2))
        boxes = [[int(x), int(y), int(w), int(h)] for (x, y), (w, h) in zip(corners, sizes, strict=True)]
        scores = rng.uniform(0.2, 1.0, 40).tolist()
        ours = {i for i in _nms_kept(cv2, boxes, scores, 0.2) if scores[i] >= 0.6}  # NudeNet's 0.2, then our 0.6
        assert ours == _nms_kept(cv2, boxes, scores, 0.6)  # MACE: NudeNet's pre-filter edited to 0.6
