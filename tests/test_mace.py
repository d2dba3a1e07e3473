"""MACE: both closed forms satisfy their normal equations, the LoRA stage lowers its loss, fusion reproduces a single
LoRA, fusion memory is flat in the number of concepts, presets and data sources resolve as documented, and the edit
behaves like every other edit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import sample_image

from erasekit import ConceptSet
from erasekit.concepts import Concept
from erasekit.edits import Edit
from erasekit.errors import ConfigError, ModelLayoutError, NumericalError, TokenizationError
from erasekit.linalg import gram, ridge_solve
from erasekit.methods import MACE, get_method
from erasekit.methods.mace import fusion
from erasekit.methods.mace.attention import cross_attention_probes, side
from erasekit.methods.mace.fusion import FusionAccumulator
from erasekit.methods.mace.lora import (
    ConceptLoRA,
    LoRASettings,
    attention_loss,
    cfis_pmf,
    loss_positions,
    mask_pixels,
    model_images,
    train_concept_lora,
)
from erasekit.methods.mace.masks import AttentionMasks, GroundedSAM, encode_images
from erasekit.methods.mace.method import resolve
from erasekit.methods.mace.prompts import TEMPLATES, prompt_pairs
from erasekit.methods.mace.refine import (
    REFERENCE_CAPTIONS,
    align_tokens,
    cached_text_gram,
    cfr_positions,
    cfr_statistics,
    prior_gram,
    refine_transform,
    text_gram,
    unpadded_ids,
)
from erasekit.models import ModelAdapter, load_pipeline
from erasekit.sources import CAPTIONS, IMAGES, MASKS


@pytest.fixture(scope="module")
def model(tiny_path):
    """One tiny pipeline for the whole module: every MACE call below leaves the model as it found it (checked)."""
    return ModelAdapter(load_pipeline(tiny_path))


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def family_model(request, tiny_path):
    """The tiny pipeline of each family: SD1.x; SD2.x (padding "!", v-prediction, linear projections); SDXL (two
    encoders, pooled and size conditioning, a first level without attention, two transformer layers per block)."""
    spec = {"sd1": tiny_path, "sd2": "erasekit:tiny-sd2", "sdxl": "erasekit:tiny-xl"}[request.param]
    return ModelAdapter(load_pipeline(spec))


QUICK = dict(templates=3, images_per_concept=2, sampling_steps=2, steps=3, prior_captions=0, progress=False)


def test_mace_is_registered_and_ships_thirty_templates_per_kind():
    assert get_method("mace") is MACE
    assert all(len(t) == 30 and all("{}" in x for x in t) for t in TEMPLATES.values())


def test_align_tokens_drops_the_phrase_and_pairs_padding_from_the_end():
    old = [100, 1, 7, 8, 2, 101]  # BOS, "a", concept (2 tokens), "b", EOS
    new = [100, 1, 9, 2, 101]  # BOS, "a", surrogate (1 token), "b", EOS
    idx_old, idx_new = align_tokens(old, new, 10)
    assert idx_old == [0, 1, 4, 5, 6, 7, 8, 9]
    assert idx_new == [0, 1, 3, 4, 6, 7, 8, 9]
    assert [old[i] for i in idx_old[:4]] == [new[i] for i in idx_new[:4]]


def _cfr_rows(model, concepts, n_templates):
    """Stage-1 rows built one by one, independently of cfr_statistics' accumulation."""
    C, G = [], []
    for concept in concepts:
        old, new = prompt_pairs(concept, n_templates)
        for a, b in zip(old, new, strict=True):
            i_old, i_new = align_tokens(unpadded_ids(model.tokenizer, a), unpadded_ids(model.tokenizer, b), 77)
            C.append(model.encode([a])[0, i_old])
            G.append(model.encode([b])[0, i_new])
    return torch.cat(C).double(), torch.cat(G).double()


@pytest.mark.parametrize("lam, alpha", [(0.5, 0.0), (1e-6, 0.3), (2.0, 1.0)])
def test_stage1_solution_satisfies_its_normal_equations(model, lam, alpha):
    concepts = [Concept("dog"), Concept("Van Gogh", kind="style")]
    P = text_gram(model, ["a red car", "a tree", "", "a photo of a house"])
    S_cc, S_gc = cfr_statistics(model, concepts, 4)
    T = refine_transform(S_cc, S_gc, alpha * P, lam)
    C, G = _cfr_rows(model, concepts, 4)
    eye = torch.eye(C.shape[1], dtype=torch.float64)
    for W0 in model.kv_weights().values():
        W0 = W0.detach().double()
        W = W0 @ T
        # gradient of sum ||W c - W0 g||^2 + lam ||W - W0||^2 + alpha sum ||W e - W0 e||^2, halved
        grad = (W @ C.T - W0 @ G.T) @ C + lam * (W - W0) + alpha * (W - W0) @ P
        scale = (W0 @ G.T @ C).abs().max() + lam * W0.abs().max() + (W0 @ P).abs().max() * alpha
        assert grad.abs().max() / scale < 1e-9
        assert not torch.allclose(W, W0 @ eye)


def test_stage1_without_ridge_on_too_few_texts_is_refused(model):
    """lambda 0 and four preserved texts leave most directions undetermined: an error, not arbitrary weights."""
    S_cc, S_gc = cfr_statistics(model, [Concept("dog")], 4)
    with pytest.raises(NumericalError, match="ill-conditioned"):
        refine_transform(S_cc, S_gc, 0.3 * text_gram(model, ["a red car", "a tree", "", "a house"]), 0.0)


def test_stage1_remaps_the_rows_after_the_concept_and_the_padding_whatever_its_token(family_model):
    """EOS pads SD1.x; "!" pads SD2.x and SDXL's second encoder. Either way the padding rows carry the prompt (the
    text encoder is causal and unmasked), differ between the concept and surrogate prompts, and are remapped."""
    model = family_model
    concept = Concept("dog")
    S_cc, S_gc = cfr_statistics(model, [concept], 30)
    T = refine_transform(S_cc, S_gc, torch.zeros_like(S_cc), 1e-3)
    old, new = prompt_pairs(concept, 30)
    e_old, e_new = model.encode([old[9]]).double()[0], model.encode([new[9]]).double()[0]  # "A photo of {}"
    i_old, i_new = cfr_positions(model, old[9], new[9])
    n_old = len(unpadded_ids(model.tokenizer, old[9]))
    assert i_old[-(77 - n_old) :] == list(range(n_old, 77))  # every padding position is paired
    for rows in (slice(None), slice(-(77 - n_old), None)):  # all aligned rows, then the padding rows alone
        before = (e_old[i_old][rows] - e_new[i_new][rows]).norm()
        after = (e_old[i_old][rows] @ T.T - e_new[i_new][rows]).norm()
        assert before > 0.02 * e_new[i_new][rows].norm()
        assert after < 0.5 * before


def test_preservation_scale_is_squared_only_in_reference_mode():
    concepts = ConceptSet.build([{"text": "Anne Hathaway", "kind": "celebrity"}])
    assert resolve(MACE(cfr_preserve_scale=1e-2), concepts).cfr_scale == pytest.approx(1e-2)
    assert resolve(MACE(cfr_preserve_scale=1e-2, reference_double_scale=True), concepts).cfr_scale == (
        pytest.approx(1e-4)
    )
    assert resolve(MACE(), concepts).preserve_weight == 8e3  # one celebrity: the erase_cele_1 preset
    many = ConceptSet.build([{"text": f"person {i}", "kind": "celebrity"} for i in range(12)])
    assert resolve(MACE(), many).preserve_weight == 8e4


def test_world_preset_is_the_kind_preset_with_the_worlds_adjustments():
    celebrity = ConceptSet.build([{"text": "Anne Hathaway", "kind": "celebrity"}])
    sd, world = resolve(MACE(), celebrity), resolve(MACE(preset="world"), celebrity)
    assert (sd.preset, world.preset) == ("celebrity", "celebrity+world")
    assert (world.lamb, world.cfr_scale, world.preserve_weight) == (sd.lamb, sd.cfr_scale, sd.preserve_weight)
    assert (sd.lora.learning_rate, sd.sampling_steps, sd.prior_source) == (1e-4, 30, "coco")
    assert (world.lora.learning_rate, world.sampling_steps, world.prior_source) == (1e-3, 20, "world")
    assert resolve(MACE(preset="world", sampling_steps=7), celebrity).sampling_steps == 7  # the user's value wins
    objects = resolve(MACE(preset="world"), ConceptSet.build(["dog"]))
    assert (objects.lamb, objects.lora.learning_rate, objects.lora.cfis) == (100.0, 1e-3, True)


def _random_lora(g, shapes, rank=1):
    return ConceptLoRA("x", {n: (torch.randn(o, rank, generator=g), torch.randn(rank, d, generator=g))
                             for n, (o, d) in shapes.items()})  # fmt: skip


def test_stage3_solution_satisfies_its_normal_equations():
    g = torch.Generator().manual_seed(0)
    d, shapes = 6, {"a": (4, 6), "b": (9, 6)}
    refined = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    original = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    R = torch.randn(20, d, generator=g, dtype=torch.float64)
    beta, lam = 0.3, 0.7
    acc = FusionAccumulator(shapes)
    concepts = [(torch.randn(5, d, generator=g), _random_lora(g, shapes)) for _ in range(3)]
    for contexts, lora in concepts:
        acc.add(contexts, lora)
    fused = acc.solve(refined, original, beta * gram(R), lam)
    for name in shapes:
        W = fused[name]
        grad = lam * (W - refined[name]) + beta * (W - original[name]) @ gram(R)
        for contexts, lora in concepts:
            c = contexts.double()
            up, down = lora.factors[name]
            target = (refined[name] + up.double() @ down.double()) @ c.T
            grad += (W @ c.T - target) @ c
        assert grad.abs().max() < 1e-9


def test_stage3_solves_large_models_in_chunks_with_the_same_solution(monkeypatch):
    """SDXL's 140 matrices are solved in chunks of right-hand sides; the chunks share the one system."""
    g = torch.Generator().manual_seed(2)
    shapes = {"a": (4, 6), "b": (9, 6), "c": (3, 6)}
    weights = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    acc = FusionAccumulator(shapes)
    for _ in range(2):
        acc.add(torch.randn(5, 6, generator=g), _random_lora(g, shapes))
    preserve = gram(torch.randn(8, 6, generator=g, dtype=torch.float64))
    whole = acc.solve(weights, weights, preserve, 0.5)
    monkeypatch.setattr(fusion, "SOLVE_CHUNK_BYTES", 8 * 6 * 5)  # at most 5 rows a chunk: a | b | c
    solves = []
    monkeypatch.setattr(fusion, "ridge_solve", lambda rhs, *args: solves.append(len(rhs)) or ridge_solve(rhs, *args))
    chunked = acc.solve(weights, weights, preserve, 0.5)
    assert solves == [4, 9, 3]
    for name in shapes:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=1e-12)


def test_stage3_memory_does_not_grow_with_the_number_of_concepts():
    g = torch.Generator().manual_seed(1)
    shapes = {f"w{i}": (64, 32) for i in range(8)}
    acc = FusionAccumulator(shapes)
    sizes = []
    for _ in range(20):
        acc.add(torch.randn(3 * 77, 32, generator=g), _random_lora(g, shapes))
        sizes.append(acc.nbytes())
    assert len(set(sizes)) == 1
    assert sizes[0] == 8 * (32 * 32 + 8 * 64 * 32)  # one d x d Gram + one out x d sum per matrix, float64


def test_cfis_concentrates_on_200_to_400():
    pmf = cfis_pmf()
    cdf = np.cumsum(pmf)
    assert pmf.sum() == pytest.approx(1.0)
    assert int(np.searchsorted(cdf, 0.5)) in range(295, 306)
    assert pmf[200:401].sum() == pytest.approx(0.86, abs=0.01)


def _stage2_inputs(model, concept):
    old, _ = prompt_pairs(concept, 3)
    embeddings = model.conditioning(old)
    seeds = [0, 1]
    images = model_images(model, concept, seeds, sampling_steps=2, guidance=7.5, size=16)
    return old, embeddings, encode_images(model, images), images


def _fixed_loss(model, concept, prompts, embeddings, posterior, settings, delta=None):
    """The stage-2 loss at fixed draws (every image x prompt at t = 300), with an optional LoRA delta applied."""
    weights = {n: w.detach() + (delta[n] if delta else 0) for n, w in model.kv_weights().items()}
    g = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad(), model.temporary_weights(weights):
        for i in range(posterior.mean.shape[0]):
            latent = posterior.mean[i : i + 1]
            noisy = model.pipe.scheduler.add_noise(latent, torch.randn(latent.shape, generator=g), torch.tensor([300]))
            for j, prompt in enumerate(prompts):
                positions = loss_positions(model, prompt, concept, settings.suppress_eos_padding)
                total += float(attention_loss(model, noisy, 300, embeddings[j : j + 1], {}, positions, "fro"))
    return total


def test_stage2_lowers_the_attention_loss_and_leaves_the_unet_as_it_was(family_model):
    model = family_model
    concept = Concept("dog")
    prompts, embeddings, posterior, _ = _stage2_inputs(model, concept)
    settings = LoRASettings(steps=25, learning_rate=3e-2)
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.unet.named_parameters()}
    lora = train_concept_lora(model, concept, prompts, embeddings, posterior, None, settings, seed=0)
    after_state = model.unet.state_dict()
    assert after_state.keys() == state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    assert grads == {n: p.requires_grad for n, p in model.unet.named_parameters()}
    assert set(lora.factors) == set(model.kv_weights())
    assert all(up.shape[1] == 1 and down.shape[0] == 1 for up, down in lora.factors.values())
    before = _fixed_loss(model, concept, prompts, embeddings, posterior, settings)
    delta = {n: lora.delta(n) for n in lora.factors}
    after = _fixed_loss(model, concept, prompts, embeddings, posterior, settings, delta)
    assert after < 0.8 * before


def test_stage2_is_deterministic_for_a_seed(family_model):
    model = family_model
    concept = Concept("dog")
    prompts, embeddings, posterior, images = _stage2_inputs(model, concept)
    masks = AttentionMasks()(model, concept, images, [0, 1])
    assert masks.shape == (2, 16, 16) and set(masks.unique().tolist()) <= {0.0, 1.0} and 0 < masks.mean() < 1
    settings = LoRASettings(steps=4, learning_rate=1e-2)
    runs = [train_concept_lora(model, concept, prompts, embeddings, posterior, masks, settings, seed=5)
            for _ in range(2)]  # fmt: skip
    assert runs[0].losses == runs[1].losses
    assert all(torch.equal(runs[0].delta(n), runs[1].delta(n)) for n in runs[0].factors)


def test_masked_pixels_follow_the_reference_nearest_resize():
    mask = torch.zeros(16, 16)
    mask[:8, :8] = 1
    pixels = mask_pixels(mask, [8, 4])
    assert pixels[8].tolist() == [r * 8 + c for r in range(4) for c in range(4)]
    assert pixels[4].tolist() == [0, 1, 4, 5]


def test_fusing_one_lora_without_preservation_reproduces_its_outputs(model):
    concept = Concept("dog")
    prompts, embeddings, posterior, _ = _stage2_inputs(model, concept)
    lora = train_concept_lora(model, concept, prompts, embeddings, posterior, None,
                              LoRASettings(steps=3, learning_rate=1e-2), seed=0)  # fmt: skip
    kv = {n: w.detach() for n, w in model.kv_weights().items()}
    acc = FusionAccumulator({n: tuple(w.shape) for n, w in kv.items()})
    acc.add(embeddings.hidden, lora)
    d = model.embedding_dim
    # A vanishing ridge: with none the system is singular (the tiny encoder's rows lie in a hyperplane) and refused.
    fused = acc.solve(kv, kv, torch.zeros(d, d, dtype=torch.float64), lamb=1e-7)
    rows = embeddings.hidden.reshape(-1, d).double()
    for name, W in kv.items():
        up, down = lora.factors[name]
        want = rows @ (W.double() + up.double() @ down.double()).T
        assert (rows @ fused[name].T - want).abs().max() < 1e-6 * want.abs().max()


def test_mace_edit_replaces_exactly_the_kv_weights_and_round_trips(tiny_pipe, tiny_model, tmp_path):
    concepts = ConceptSet.build(["dog"], preserve=["a red car"])
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    edit = MACE(**QUICK, export_loras=True).fit(tiny_model, concepts)
    assert all(torch.equal(before[k], v) for k, v in tiny_pipe.unet.state_dict().items()), "fit must not modify"
    assert set(edit.weights) == set(tiny_model.kv_weights())
    assert all(not torch.equal(edit.weights[n], before[n]) for n in edit.weights)
    assert edit.extras["mace/cfr_transform"].shape == (32, 32)
    assert len([k for k in edit.extras if k.startswith("mace/lora/0/")]) == 2 * len(edit.weights)
    loaded = Edit.load(edit.save(tmp_path / "mace.safetensors"))
    loaded.apply(tiny_pipe)
    assert all(torch.equal(tiny_pipe.unet.state_dict()[n], edit.weights[n]) for n in edit.weights)
    loaded.remove(tiny_pipe)
    assert all(torch.equal(before[k], v) for k, v in tiny_pipe.unet.state_dict().items())


def test_mace_resumes_finished_concepts_from_its_work_dir(model, tmp_path, monkeypatch):
    concepts = ConceptSet.build(["dog", "cat"])
    params = dict(QUICK, work_dir=str(tmp_path / "work"))
    first = MACE(**params).fit(model, concepts)
    assert len(list((tmp_path / "work").glob("lora-*.safetensors"))) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a cached concept was trained again")

    monkeypatch.setattr("erasekit.methods.mace.method.train_concept_lora", no_training)
    second = MACE(**params).fit(model, concepts)
    assert all(torch.equal(first.weights[n], second.weights[n]) for n in first.weights)


def test_mace_without_loras_is_the_stage1_edit(model):
    concepts = ConceptSet.build(["dog"])
    edit = MACE(**QUICK, lora=False).fit(model, concepts)
    T = edit.extras["mace/cfr_transform"].double()
    for name, W0 in model.kv_weights().items():
        assert torch.allclose(edit.weights[name].double(), W0.detach().double() @ T, atol=1e-6)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"templates": 31}, "templates: must be in 1..30, got 31"),
        ({"refine": False, "lora": False}, "lora: refine and lora cannot both be false"),
        ({"preset": "cifar"}, "preset: unknown preset 'cifar'"),
        ({"mask_source": "world"}, "mask_source: 'world' gives exact masks of its own images only; set image_source"),
        ({"mask_source": "grounded_sam"}, "mask_source: 'grounded_sam' needs gsam_detector"),
        ({"learning_rate": -1.0}, "learning_rate: must be >= 0"),
        ({"mask_threshold": 1.5}, r"mask_threshold: must be in \(0, 1\)"),
        ({"sampling_steps": 0}, "sampling_steps: must be >= 1"),
        ({"cfis_t1": 500}, "cfis_t2: CFIS needs 0 <= cfis_t1 < cfis_t2"),
        ({"cfis_gamma": 0}, "cfis_gamma: must be > 0"),
        ({"image_source": "wrld"}, "image_source: unknown image source 'wrld'; available: model"),
        ({"mask_source": "sam"}, "mask_source: unknown mask source 'sam'; available: auto, attention, none"),
        ({"prior_source": "laion"}, "prior_source: unknown caption source 'laion'; available: coco"),
    ],
)
def test_bad_mace_params_are_one_line_config_errors(params, message):
    with pytest.raises(ConfigError, match=rf"^mace params\.{message}") as caught:
        MACE(params)
    assert "\n" not in str(caught.value)


def test_fit_declares_its_mask_source_option():
    assert MACE.fit_options() == ["mask_source"]
    with pytest.raises(ConfigError, match="no option 'masks'"):
        MACE.check_fit_options({"masks": None})


def _square_images(concept: Concept, seeds) -> torch.Tensor:
    """A test image source: one uniform grey 16 x 16 image per seed."""
    return torch.linspace(-1, 1, len(seeds))[:, None, None, None].expand(-1, 3, 16, 16).clone()


def _square_masks(concept: Concept, seeds) -> torch.Tensor:
    """Its exact masks: the left half of every image is the concept."""
    mask = torch.zeros(len(seeds), 16, 16)
    mask[:, :, :8] = 1
    return mask


def test_a_registered_image_source_gives_the_training_images_and_its_masks(model, monkeypatch):
    IMAGES.add("test-squares", _square_images)
    MASKS.add("test-squares", _square_masks)
    seen = {}

    def spy(model, concept, prompts, embeddings, posterior, masks, *args):
        seen["latents"], seen["masks"] = posterior.mean, masks
        return train_concept_lora(model, concept, prompts, embeddings, posterior, masks, *args)

    monkeypatch.setattr("erasekit.methods.mace.method.train_concept_lora", spy)
    MACE(**QUICK, image_source="test-squares").fit(model, ConceptSet.build(["dog"]))
    assert torch.equal(seen["masks"], _square_masks(Concept("dog"), [0, 1]))  # auto: the source's own masks
    assert torch.equal(seen["latents"], encode_images(model, _square_images(Concept("dog"), [0, 1])).mean)
    MACE(**QUICK, image_source="test-squares", mask_source="none").fit(model, ConceptSet.build(["dog"]))
    assert seen["masks"] is None


def _few_captions(n: int, exclude) -> list[str]:
    return [c for c in ("a red car", "a dog on grass", "a tree")[:n] if not any(x in c for x in exclude)]


def test_the_prior_comes_from_the_named_caption_source_rescaled_to_the_reference_mass(model, monkeypatch, tmp_path):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path))
    CAPTIONS.add("test-few", _few_captions)
    prior = prior_gram(model, 3, "test-few", exclude=["dog"])
    assert torch.allclose(prior, text_gram(model, ["a red car", "a tree"]) * (REFERENCE_CAPTIONS / 2))
    coco = CAPTIONS.get("coco")(2, ["bicycle"])  # COCO excludes nothing, as the reference's prior
    assert coco == [
        "A bicycle replica with a clock as the front wheel.",
        "A black Honda motorcycle parked in front of a garage.",
    ]


def test_mixed_kinds_need_an_explicit_preset():
    concepts = ConceptSet.build([{"text": "dog"}, {"text": "Van Gogh", "kind": "style"}])
    with pytest.raises(ConfigError, match=r"explicit params\.preset"):
        resolve(MACE(), concepts)
    assert resolve(MACE(preset="style"), concepts).preset == "style"


def test_grounded_sam_refuses_missing_local_weights(tmp_path):
    with pytest.raises(ModelLayoutError, match="not found"):
        GroundedSAM(str(tmp_path / "dino"), str(tmp_path / "sam"))


# ------------------------------------------------------------------------------------------------ SDXL and SD2.x
@pytest.mark.parametrize("spec", ["erasekit:tiny-xl", "erasekit:tiny-sd2"])
def test_mace_fits_applies_saves_and_removes_exactly_on_sdxl_and_sd2(spec, tmp_path):
    pipe = load_pipeline(spec)
    model = ModelAdapter(pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    original = sample_image(pipe)
    edit = MACE(**QUICK).fit(model, ConceptSet.build(["dog"], preserve=["a red car"]))
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items()), "fit must not modify"
    assert set(edit.weights) == set(model.kv_weights()) and edit.info["family"] == model.family
    assert all(not torch.equal(edit.weights[n], before[n]) for n in edit.weights)
    assert all(len(first_last) == 2 for first_last in edit.info["lora_loss_first_last"].values())
    edit.apply(pipe)
    edited = sample_image(pipe)
    edit.remove(pipe)
    loaded = Edit.load(edit.save(tmp_path / "mace.safetensors"))
    loaded.apply(pipe)
    assert np.array_equal(sample_image(pipe), edited) and not np.array_equal(edited, original)
    loaded.remove(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert np.array_equal(sample_image(pipe), original)


@torch.no_grad()
def test_attention_probes_see_every_cross_attention_call_and_change_nothing(family_model):
    """SDXL: a first level without attention and two transformer layers per block; SD2: linear projections. Every
    ``attn2`` reports its probabilities (rows over the 77 positions summing to 1, square maps) and the UNet's output
    through the explicit processors equals its output through its own."""
    model = family_model
    cond = model.conditioning(["a photo of a dog"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300])
    seen: dict[int, torch.Tensor] = {}
    processors = [layer.module.processor for layer in model.layers]
    with cross_attention_probes(model, lambda index, probs: seen.setdefault(index, probs)):
        probed = model.denoise(latents, t, cond)
    assert sorted(seen) == list(range(len(model.layers)))
    for probs in seen.values():
        assert probs.shape[-1] == 77 and side(probs.shape[1]) ** 2 == probs.shape[1]
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert [layer.module.processor for layer in model.layers] == processors
    torch.testing.assert_close(probed, model.denoise(latents, t, cond), rtol=1e-4, atol=1e-5)


class _SplitsFirstWordTwice:
    """A tokenizer that places the words one position later than CLIP's (it repeats the first word)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str):
        ids = self.tokenizer(text).input_ids
        return SimpleNamespace(input_ids=[ids[0], ids[1], *ids[1:]])


def test_cfr_pairs_one_set_of_positions_for_both_sdxl_tokenizers(monkeypatch):
    model = ModelAdapter(load_pipeline("erasekit:tiny-xl"))
    first, second = (tokenizer for tokenizer, _ in model.encoders)
    assert first.pad_token_id == first.eos_token_id != second.pad_token_id  # EOS padding, then "!" padding
    old, new = "A photo of tom cruise", "A photo of a person"
    idx_old, idx_new = cfr_positions(model, old, new)
    assert (idx_old[:4], idx_new[:4]) == ([0, 1, 2, 3], [0, 1, 2, 3])  # BOS "a photo of"
    assert idx_old[4:] == [6, *range(7, 77)] and idx_new[4:] == [6, *range(7, 77)]  # EOS, then the padding
    monkeypatch.setattr(model, "tokenizer_2", _SplitsFirstWordTwice(second))
    with pytest.raises(TokenizationError, match=r"split .* differently"):
        cfr_positions(model, old, new)


def test_caption_statistics_are_cached_per_encoders_and_tokenizers(monkeypatch, tmp_path):
    """SDXL's Gram covers both encoders' halves (32 + 48 columns on tiny-xl); another padding token is another key."""
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path))
    pipe = load_pipeline("erasekit:tiny-xl")
    model = ModelAdapter(pipe)
    texts = ["a red car", "a tree"]
    gram_bang = cached_text_gram(model, texts)
    assert gram_bang.shape == (80, 80) and torch.equal(gram_bang, text_gram(model, texts))
    pipe.tokenizer_2.pad_token = pipe.tokenizer_2.eos_token
    gram_eos = cached_text_gram(model, texts)
    assert len(list((tmp_path / "mace").glob("gram-*.safetensors"))) == 2
    assert not torch.allclose(gram_eos, gram_bang)
