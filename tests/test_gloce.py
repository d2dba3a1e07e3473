"""GLoCE: the closed form, the gate and its calibration on random data; modules in a pipeline; artifacts; the world."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from helpers import sample_image

from erasekit import Edit, load_edit, load_pipeline
from erasekit.concepts import Concept, ConceptSet
from erasekit.errors import ConfigError
from erasekit.methods import get_method
from erasekit.methods.gloce import statistics
from erasekit.methods.gloce.core import (
    GateBasis,
    LayerModules,
    Moments,
    calibrate,
    gate_directions,
    lowrank_update,
    pooled_tokens,
    replacement,
    top_eigenvectors,
)
from erasekit.methods.gloce.method import GLoCE, merge_edits
from erasekit.methods.gloce.roles import TextSimilarity, resolve_roles
from erasekit.methods.gloce.statistics import TokenMoments
from erasekit.models import ModelAdapter

TINY = {"sampling_steps": 5, "guidance": 5.0, "seeds": 2, "progress": False}


def _tokens(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales + shift


def test_moments_accumulate_the_sample_mean_and_biased_covariance():
    x = _tokens(300, 6, 0, shift=2.0)
    m = Moments(6)
    for chunk in x.split(70):
        m.add(chunk)
    assert m.count == 300
    torch.testing.assert_close(m.mean(), x.mean(0))
    torch.testing.assert_close(m.covariance(), torch.cov(x.T, correction=0))


def test_pooled_tokens_add_each_dividing_scale_and_keep_the_mean():
    x = torch.randn(2, 64, 5)  # an 8x8 map
    pooled = pooled_tokens(x)
    assert pooled.shape == (2 * (64 + 16 + 4 + 1), 5)
    # every scale averages the same map, so each block of pooled tokens has the map's mean
    torch.testing.assert_close(pooled[-2:].mean(0), x.mean((0, 1)), atol=1e-5, rtol=0)
    assert pooled_tokens(torch.randn(1, 16, 5)).shape == (16 + 4 + 1, 5)  # 4x4: the 8x scale is skipped
    assert pooled_tokens(torch.randn(1, 12, 5)).shape == (12, 5)  # not square: full resolution only


def test_principal_directions_are_the_leading_eigenvectors_of_the_covariance():
    x = _tokens(500, 8, 1)
    m = Moments(8)
    m.add(x)
    U = top_eigenvectors(m.covariance(), 3)
    centred = x - x.mean(0)
    _, _, Vh = torch.linalg.svd(centred, full_matrices=False)  # independent route: SVD of the data
    torch.testing.assert_close(U @ U.T, Vh[:3].T @ Vh[:3])
    torch.testing.assert_close(U.T @ U, torch.eye(3, dtype=torch.float64))


def test_lowrank_update_matches_its_closed_form_and_removes_the_target_subspace():
    d = 10
    target, mapping = _tokens(400, d, 2, shift=1.0), _tokens(400, d, 3, shift=-2.0).flip(1)
    mt, mm = Moments(d), Moments(d)
    mt.add(target)
    mm.add(mapping)
    U_t, U_m = top_eigenvectors(mt.covariance(), 4), top_eigenvectors(mm.covariance(), 2)
    A, B = lowrank_update(U_t, U_m)
    P = U_m @ U_m.T @ (torch.eye(d, dtype=torch.float64) - U_t @ U_t.T)
    b = mt.mean() @ -P.T + mm.mean()
    x = _tokens(20, d, 4)
    out = replacement(x, A, B, mt.mean(), mm.mean())
    torch.testing.assert_close(B @ A.T, P)
    torch.testing.assert_close(out, x @ P.T + b)  # x'' = P* x + b*
    # a token that differs from the target mean only inside the target's subspace maps to the mapping mean
    inside = mt.mean() + torch.randn(5, 4, dtype=torch.float64) @ U_t.T
    torch.testing.assert_close(replacement(inside, A, B, mt.mean(), mm.mean()), mm.mean().expand(5, d))
    # and every output lies in mu_m + span(U_m)
    residual = (out - mm.mean()) - (out - mm.mean()) @ U_m @ U_m.T
    assert residual.abs().max() < 1e-10


def test_gate_scores_in_factored_form_equal_the_direct_cosine_squared():
    K, d, r = 4, 12, 2
    x = _tokens(50, d, 5).float()
    G = torch.stack([top_eigenvectors(torch.cov(_tokens(80, d, 10 + k).T), r) for k in range(K)]).float()
    mu_n = torch.randn(K, d)
    direct = torch.stack(
        [((x - mu_n[k]) @ G[k]).square().sum(-1) / (x - mu_n[k]).square().sum(-1) for k in range(K)], dim=1
    )
    scores = GateBasis(G, mu_n).scores(x)
    torch.testing.assert_close(scores, direct, atol=1e-5, rtol=1e-4)
    assert scores.min() >= 0 and scores.max() <= 1 + 1e-5


def test_gate_directions_point_from_the_centre_to_the_target():
    d = 6
    cov = torch.diag(torch.full((d,), 1e-3, dtype=torch.float64))
    mu_t, mu_n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    mu_t[2] = 5.0
    G = gate_directions(cov, mu_t, mu_n, 1)
    torch.testing.assert_close(G[:, 0].abs(), torch.eye(d, dtype=torch.float64)[2])


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_calibrated_gate_is_half_open_at_the_threshold_and_99_percent_at_its_width(mode):
    maxima = torch.tensor([0.2, 0.3, 0.25, 0.35, 0.28])
    tau = 2.5
    c, k = calibrate(maxima, tau, mode)
    std = float(maxima.double().std())  # unbiased, as the reference's torch.std
    assert c == pytest.approx(float(maxima.double().mean()) + tau * std)
    width = 0.001 * tau if mode == "hard" else 0.1 * tau * std
    gate = lambda s: 1 / (1 + math.exp(-k * (s - c)))  # noqa: E731
    assert gate(c) == pytest.approx(0.5)
    assert gate(c + width) == pytest.approx(0.99)
    assert gate(c - width) == pytest.approx(0.01)


def _random_modules(K: int = 3, d: int = 8, seed: int = 0) -> LayerModules:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    G = torch.linalg.qr(rand(K, d, 1))[0]
    return LayerModules(
        A=rand(K, d, 2), B=rand(K, d, 2), mu_t=rand(K, d), mu_m=rand(K, d), G=G, mu_n=rand(K, d),
        center=torch.full((K,), 0.5), slope=torch.full((K,), 8.0), eta=torch.tensor([1.0, 5.0, 0.5]), min_gate=0.05,
    )  # fmt: skip


def test_layer_forward_applies_the_concept_with_the_largest_gate_to_each_token():
    mods = _random_modules()
    x = torch.randn(2, 30, 8)
    y = mods(x)
    flat, expect = x.reshape(-1, 8), x.reshape(-1, 8).clone()
    for i, v in enumerate(flat):  # the reference's per-token formula, one token and one concept at a time
        gates = []
        for k in range(3):
            diff = v - mods.mu_n[k]
            s = (mods.G[k].T @ diff).square().sum() / diff.square().sum()
            gates.append(torch.sigmoid(mods.slope[k] * (s - mods.center[k])))
        j = int(torch.stack(gates).argmax())
        g = gates[j]
        if g >= mods.min_gate:
            x2 = mods.mu_m[j] + mods.B[j] @ (mods.A[j].T @ (v - mods.mu_t[j]))
            expect[i] = (1 - g) * v + g * mods.eta[j] * x2
    torch.testing.assert_close(y.reshape(-1, 8), expect, atol=1e-5, rtol=1e-5)
    untouched = (y.reshape(-1, 8) == flat).all(-1)
    assert 0 < int(untouched.sum()) < flat.shape[0]  # some gates open, some shut (the test covers both)
    assert mods(x, active=torch.zeros(3, dtype=torch.bool)) is None  # no concept in its window: no change


def test_config_is_validated_up_front_and_presets_resolve_per_kind():
    with pytest.raises(ConfigError, match=r"^gloce params\.template: must contain '\{\}' once"):
        GLoCE(template="a photo of")
    with pytest.raises(ConfigError, match=r"^gloce params\.collect_until: must be > collect_from \(0\.5\), got 0\.4$"):
        GLoCE(collect_from=0.5, collect_until=0.4)
    with pytest.raises(ConfigError, match=r"^gloce params\.thresh: must be > 0, got 0"):
        GLoCE(thresh=0)
    assert GLoCE().settings("explicit").eta == 5.0 and GLoCE().settings("style").update_rank == 1
    assert GLoCE(eta=2.0).settings("explicit").eta == 2.0  # the user's value wins over the kind's preset
    with pytest.raises(ConfigError, match="collect_until"):  # the preset's window [0.2, 0.4) would become empty
        GLoCE(collect_from=0.5).settings("object")
    assert get_method("gloce") is GLoCE
    described = {name for name, _, _ in GLoCE.describe()}
    assert {"update_rank", "degen_rank", "gate_rank", "thresh", "eta", "active_from"} <= described


def test_roles_take_similar_preserved_concepts_as_anchors_and_dissimilar_ones_as_mapping(tiny_model):
    preserve = ["a red car", "a blue boat", "a green tree", "a cat", "a dog house", "two dogs"]
    concepts = ConceptSet.build([Concept("dog", kind="object")], preserve)
    (roles,) = resolve_roles(tiny_model, concepts, GLoCE(n_anchors=2, n_mapping=2).settings)
    pool = [p for p in preserve if "dog" not in p]  # texts that contain the target are never roles
    sims = TextSimilarity(tiny_model, 8)("a photo of dog", [f"a photo of {p}" for p in pool])
    emb = tiny_model.encode(["a photo of dog", "a photo of a cat"])[:, 1:9]  # the definition, computed directly
    direct = torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=-1).mean()
    torch.testing.assert_close(sims[pool.index("a cat")], direct, atol=1e-5, rtol=0)
    order = [pool[i] for i in torch.argsort(sims, descending=True).tolist()]
    assert roles.anchors == [f"a photo of {p}" for p in order[:2]]
    assert roles.mapping == [f"a photo of {p}" for p in order[::-1][:2]]
    assert roles.centre == "a photo of an object" and roles.target == ["a photo of dog"]
    mass = ConceptSet.build([Concept(t, kind="celebrity") for t in ("Anna Bell", "Anne Bell", "Zed Quux")])
    first = resolve_roles(tiny_model, mass, GLoCE(n_anchors=1).settings)[0]
    sims = TextSimilarity(tiny_model, 8)("a photo of Anna Bell", ["a photo of Anne Bell", "a photo of Zed Quux"])
    # no preserved texts: the gate is anchored on the most similar other erased concept, mapped to the centre
    assert first.anchors == [["a photo of Anne Bell", "a photo of Zed Quux"][int(sims.argmax())]]
    assert first.mapping == [first.centre] == ["a photo of a person"]
    alone = resolve_roles(tiny_model, mass, GLoCE(anchors_from_erased=False).settings)[0]
    assert alone.anchors == [alone.centre]
    explicit = ConceptSet.build([Concept("nudity", kind="explicit", guide="a clothed person")])
    (roles,) = resolve_roles(tiny_model, explicit, GLoCE().settings)
    assert roles.mapping == ["a clothed person"]
    assert roles.anchors == ["a man in modest clothing", "a woman in modest clothing"]


@pytest.fixture(scope="module")
def fitted_once(tiny_path) -> Edit:
    """One object and one style concept fitted once for the module (fitting leaves the pipeline unchanged)."""
    concepts = ConceptSet.build([Concept("dog", kind="object"), Concept("Vincent", kind="style")], ["a cat"])
    return GLoCE(**{**TINY, "progress": True}).fit(ModelAdapter(load_pipeline(tiny_path)), concepts)


@pytest.fixture
def fitted(fitted_once) -> Edit:
    """A copy each test may change."""
    return copy.deepcopy(fitted_once)


def _set_centres(edit: Edit, value: float) -> None:
    for name in edit.modules:
        if name.endswith("/center"):
            edit.modules[name] = torch.full_like(edit.modules[name], value)


def test_fit_stacks_one_module_per_concept_on_every_cross_attention_output(fitted, tiny_pipe):
    layers = [layer.name for layer in ModelAdapter(tiny_pipe).layers]
    assert fitted.module_kind == "gloce" and fitted.module_spec["layers"] == layers
    assert fitted.module_spec["concepts"] == ["dog", "Vincent"]
    assert fitted.module_spec["eta"] == [1.0, 1.0] and fitted.module_spec["active_from"] == [0.2, 0.0]
    A = fitted.modules[f"{layers[0]}/A"]
    assert A.shape[:2] == (2, 32) and A.shape[2] == 2  # ranks padded to the largest (object 2, style 1)
    assert torch.all(A[1, :, 1] == 0)
    assert not fitted.weights  # GLoCE adds modules, it replaces no weight
    assert set(fitted.info["concepts"]) == {"dog", "Vincent"}


def test_closed_gate_leaves_the_pipeline_bit_identical_and_open_gate_changes_it(fitted, tiny_pipe):
    before = sample_image(tiny_pipe, "a photo of dog")
    _set_centres(fitted, 2.0)  # s <= 1 < c: every gate shut
    fitted.apply(tiny_pipe)
    assert np.array_equal(sample_image(tiny_pipe, "a photo of dog"), before)
    fitted.remove(tiny_pipe)
    _set_centres(fitted, -1.0)  # every gate open
    fitted.apply(tiny_pipe)
    assert not np.array_equal(sample_image(tiny_pipe, "a photo of dog"), before)
    fitted.remove(tiny_pipe)
    assert np.array_equal(sample_image(tiny_pipe, "a photo of dog"), before)
    for layer in ModelAdapter(tiny_pipe).layers:
        assert not layer.to_out._forward_hooks
    assert not tiny_pipe.unet._forward_pre_hooks


def test_activation_window_is_read_from_the_timestep(fitted, tiny_pipe):
    before = sample_image(tiny_pipe, "a photo of dog")
    _set_centres(fitted, -1.0)
    fitted.module_spec["active_from"] = [1.0, 1.0]  # progress 1 - t/1000 never reaches 1 with steps_offset 1
    fitted.apply(tiny_pipe)
    assert np.array_equal(sample_image(tiny_pipe, "a photo of dog"), before)


def test_save_load_apply_reproduces_outputs(fitted, tiny_path, tmp_path):
    pipe = load_pipeline(tiny_path)
    _set_centres(fitted, -1.0)  # open, so the comparison is between edited images
    fitted.apply(pipe)
    expected = sample_image(pipe, "a photo of dog")
    path = fitted.save(tmp_path / "gloce.safetensors")
    fresh = load_pipeline(tiny_path)
    loaded = load_edit(fresh, path)
    assert loaded.module_spec == fitted.module_spec
    assert np.array_equal(sample_image(fresh, "a photo of dog"), expected)


def test_separately_fitted_edits_merge_into_the_joint_fit(fitted, tiny_pipe):
    model = ModelAdapter(tiny_pipe)
    parts = [
        GLoCE(**TINY).fit(model, ConceptSet.build([Concept(text, kind=kind)], ["a cat"]))
        for text, kind in (("dog", "object"), ("Vincent", "style"))
    ]
    merged = merge_edits(parts)
    assert merged.module_spec == fitted.module_spec and merged.base_fingerprint == fitted.base_fingerprint
    assert merged.modules.keys() == fitted.modules.keys()
    for name, tensor in fitted.modules.items():
        torch.testing.assert_close(merged.modules[name], tensor, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="more than one edit"):
        merge_edits([parts[0], parts[0]])


def test_world_localized_erasure_removes_the_church_and_keeps_the_fish():
    from erasekit.world import load_classifiers
    from erasekit.world.spec import OBJECTS

    pipe = load_pipeline("erasekit:world")
    others = [o.name for o in OBJECTS if o.name != "church"]
    edit = GLoCE(sampling_steps=20, guidance=5.0, progress=False).fit(
        ModelAdapter(pipe), ConceptSet.build([Concept("church", kind="object")], others)
    )
    scene = ["a church on the left and a fish on the right"] * 6
    edit.apply(pipe)
    images = pipe(scene + ["a photo of a fish"] * 4, num_inference_steps=20, guidance_scale=5.0,
                  generator=[torch.Generator().manual_seed(s) for s in range(10)]).images  # fmt: skip
    classifiers = load_classifiers()
    left = classifiers.predict(images[:6], "scene_left")
    right = classifiers.predict(images[:6], "scene_right")
    assert left.count("church") <= 1  # base model: 6/6 churches on the left
    assert right.count("fish") >= 5 and classifiers.predict(images[6:], "object").count("fish") >= 3


# ------------------------------------------------------------------------------------------------ SDXL and SD2.x
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' Euler with numpy 2
@pytest.mark.parametrize("spec", ["erasekit:tiny-xl", "erasekit:tiny-sd2"])
def test_gloce_fits_applies_saves_and_removes_exactly_on_sdxl_and_sd2(spec, tmp_path):
    """Modules on every cross-attention output (SDXL: two transformer layers per block, none in the first level),
    fitted through the family's own pipeline (SDXL: with SDXL base's Euler scheduler, float timesteps)."""
    pipe = load_pipeline(spec)
    if spec.endswith("xl"):
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    model = ModelAdapter(pipe)
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    original = sample_image(pipe, "a photo of dog")
    edit = GLoCE(**TINY).fit(model, ConceptSet.build([Concept("dog", kind="object")], ["a cat", "a tree"]))
    assert all(torch.equal(state[k], v) for k, v in pipe.unet.state_dict().items()), "fit must not modify"
    assert edit.module_spec["layers"] == [layer.name for layer in model.layers] and edit.info["family"] == model.family
    for layer in model.layers:
        assert edit.modules[f"{layer.name}/A"].shape[1] == layer.to_out.out_features
    _set_centres(edit, 2.0)  # every gate shut: the pipeline's own images, bit for bit
    edit.apply(pipe)
    assert np.array_equal(sample_image(pipe, "a photo of dog"), original)
    edit.remove(pipe)
    _set_centres(edit, -1.0)  # every gate open
    edit.apply(pipe)
    edited = sample_image(pipe, "a photo of dog")
    edit.remove(pipe)
    assert not np.array_equal(edited, original)
    assert np.array_equal(sample_image(pipe, "a photo of dog"), original)
    assert not pipe.unet._forward_pre_hooks and all(not layer.to_out._forward_hooks for layer in model.layers)
    loaded = load_edit(pipe, edit.save(tmp_path / "gloce.safetensors"))
    assert np.array_equal(sample_image(pipe, "a photo of dog"), edited)
    loaded.remove(pipe)
    assert np.array_equal(sample_image(pipe, "a photo of dog"), original)


def test_moment_cache_is_bounded_in_bytes_and_a_call_keeps_its_own_prompts(monkeypatch):
    """At SDXL size one prompt's moments are ~820 MB: the cache is bounded in bytes as well as prompts, and a call
    whose prompts alone exceed the bound still merges all of them."""
    model = ModelAdapter(load_pipeline("erasekit:tiny-xl"))
    run = GLoCE(**TINY).settings()
    prompts, window = ["a photo of dog", "a photo of cat", "a photo of car"], (0.2, 0.4, 2)
    unbounded = TokenMoments(model, run)(prompts, window)
    bounded = TokenMoments(model, run)
    one_prompt = sum(layer.to_out.out_features * (layer.to_out.out_features + 1) * 8 for layer in model.layers)
    monkeypatch.setattr(statistics, "MOMENT_CACHE_BYTES", one_prompt)
    merged = bounded(prompts, window)
    assert [key[0] for key in bounded.cache] == ["a photo of car"] and bounded.nbytes() == one_prompt
    for a, b in zip(merged, unbounded, strict=True):
        assert a.count == b.count and torch.equal(a.outer, b.outer) and torch.equal(a.total, b.total)
