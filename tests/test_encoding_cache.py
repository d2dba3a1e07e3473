"""The on-disk cache of text encodings and RECE's Gram (models/cache.py): the same bits as computing them, never the
result of other weights or ids, atomic and size-limited, switchable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.concepts import ConceptSet
from erasekit.errors import ConfigError
from erasekit.methods import RECE, UCE
from erasekit.methods.rece import original_gram
from erasekit.models import ModelAdapter, load_pipeline
from erasekit.models import cache as cache_module
from erasekit.models.adapter import Conditioning
from erasekit.models.cache import TensorCache, module_fingerprint

TEXTS = ["dog", "cat", "a photo of a dog", "van gogh", "dog", "puppy"]


@pytest.fixture
def cache_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The cache switched on, in a temporary ``$ERASEKIT_CACHE``; returns its folder."""
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("ERASEKIT_TEXT_CACHE", "1")
    return tmp_path / "computed"


def count_encoder_calls(model: ModelAdapter) -> list[int]:
    """How many texts each batch through the text encoder(s) held (a list that grows as they run); not a hook on the
    encoder, which would make the adapter bypass the cache."""
    calls: list[int] = []
    encode_ids = model.encode_ids

    def counted(ids: list[torch.Tensor]) -> Conditioning:
        calls.append(len(ids[0]))
        return encode_ids(ids)

    model.encode_ids = counted
    return calls


def uncached(model: ModelAdapter) -> ModelAdapter:
    model.tensor_cache = None
    return model


def test_adapter_uses_the_cache_unless_switched_off(cache_on: Path, tiny_pipe, monkeypatch: pytest.MonkeyPatch):
    assert ModelAdapter(tiny_pipe).tensor_cache.folder == cache_on
    monkeypatch.setenv("ERASEKIT_TEXT_CACHE", "0")
    assert ModelAdapter(tiny_pipe).tensor_cache is None


def test_cached_encodings_are_the_uncached_bits_cold_and_warm(cache_on: Path, tiny_pipe):
    expected = uncached(ModelAdapter(tiny_pipe))
    want = [expected.encode(TEXTS), expected.encode(TEXTS, positions=4), expected.conditioning(TEXTS).hidden]
    for _ in ("cold", "warm"):
        model = ModelAdapter(tiny_pipe)
        got = [model.encode(TEXTS), model.encode(TEXTS, positions=4), model.conditioning(TEXTS).hidden]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert TensorCache(cache_on).stats().entries == {"text": 2 * len(set(TEXTS))}  # full and 4-position rows


def test_a_warm_encoding_runs_no_text_encoder_and_a_partial_one_only_the_new_texts(cache_on: Path, tiny_model):
    calls = count_encoder_calls(tiny_model)
    tiny_model.encode(TEXTS[:3])
    assert calls == [3]
    tiny_model.encode(TEXTS)
    assert calls == [3, 2]  # "van gogh" and "puppy"
    tiny_model.encode(TEXTS)
    assert calls == [3, 2]


def test_sdxl_conditioning_with_its_pooled_embedding_comes_back_bit_for_bit(tmp_path: Path):
    model = ModelAdapter(load_pipeline("erasekit:tiny-xl"))
    want, want_3 = uncached(model).conditioning(TEXTS), model.encode(TEXTS, positions=3)
    model.tensor_cache = TensorCache(tmp_path)
    for _ in ("cold", "warm"):
        got = model.conditioning(TEXTS)
        assert torch.equal(got.hidden, want.hidden) and torch.equal(got.pooled, want.pooled)
        assert torch.equal(model.encode(TEXTS, positions=3), want_3)


def test_changed_encoder_weights_miss_the_cache(cache_on: Path, tiny_model):
    before = tiny_model.encode(TEXTS)
    bias = list(tiny_model.text_encoder.parameters())[-1]  # the final layer norm's
    with torch.no_grad():
        bias.add_(0.5)
    after = tiny_model.encode(TEXTS)
    assert not torch.equal(after, before)
    assert torch.equal(after, uncached(ModelAdapter(tiny_model.pipe)).encode(TEXTS))


def test_other_base_models_share_no_entries(cache_on: Path, tiny_path: Path, other_tiny_path: Path):
    ModelAdapter(load_pipeline(tiny_path)).encode(TEXTS)
    other = ModelAdapter(load_pipeline(other_tiny_path))
    calls = count_encoder_calls(other)
    other.encode(TEXTS)
    assert calls == [len(set(TEXTS))]


def test_fingerprint_is_hashed_once_per_weights(tiny_pipe, monkeypatch: pytest.MonkeyPatch):
    hashed = []
    real = cache_module.tensors_fingerprint
    monkeypatch.setattr(cache_module, "tensors_fingerprint", lambda t: hashed.append(1) or real(t))
    encoder = tiny_pipe.text_encoder
    first = module_fingerprint(encoder)
    assert module_fingerprint(encoder) == first and len(hashed) == 1
    with torch.no_grad():
        list(encoder.parameters())[-1].add_(1.0)  # an in-place write: rehash
    second = module_fingerprint(encoder)
    assert second != first and len(hashed) == 2
    encoder.double()  # new storages: rehash (also where an address is reused)
    assert module_fingerprint(encoder) not in (first, second) and len(hashed) == 3
    encoder.load_state_dict({k: v.clone() for k, v in encoder.state_dict().items()})
    module_fingerprint(encoder)
    assert len(hashed) == 4  # load_state_dict copies in place, which bumps the version counters


def test_a_corrupt_entry_is_a_miss_and_is_rewritten(cache_on: Path, tiny_model):
    want = tiny_model.encode(["dog"])
    (entry,) = cache_on.rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:50])
    assert torch.equal(tiny_model.encode(["dog"]), want)
    assert torch.equal(tiny_model.encode(["dog"]), want) and entry.stat().st_size > 50


def test_least_recently_used_entries_go_beyond_the_limit(tmp_path: Path):
    cache = TensorCache(tmp_path, limit=10_000)  # room for two entries of ~4 KB
    for age, key in enumerate(("aa1", "bb2", "cc3")):
        cache.put("text", key, {"x": torch.zeros(1000)})
        os.utime(cache.path("text", key), (1000 + age, 1000 + age))  # written in this order, long ago
    cache.get("text", "aa1")  # a hit: now the most recently used
    cache.evict()
    assert [cache.get("text", k) is not None for k in ("aa1", "bb2", "cc3")] == [True, False, True]


def test_a_bad_size_limit_is_one_config_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ERASEKIT_TEXT_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="ERASEKIT_TEXT_CACHE_MB: 'lots'"):
        TensorCache()


def test_uce_and_rece_edits_are_the_same_bits_with_the_cache_cold_and_warm(cache_on: Path, tiny_pipe):
    concepts = ConceptSet.build(
        [{"text": "dog", "synonyms": ["puppy"]}, {"text": "van gogh", "kind": "style"}], ["cat"]
    )
    fits = {
        "uce": UCE(token_policy="uce_2025", templates=True, erase_synonyms=True),
        "rece": RECE(epochs=2),
    }
    for name, method in fits.items():
        want = method.fit(uncached(ModelAdapter(tiny_pipe)), concepts)
        for _ in ("cold", "warm"):
            got = method.fit(ModelAdapter(tiny_pipe), concepts)
            assert got.weights.keys() == want.weights.keys(), name
            assert all(torch.equal(got.weights[k], want.weights[k]) for k in want.weights), name
            assert all(torch.equal(got.extras[k], want.extras[k]) for k in want.extras), name
    assert TensorCache(cache_on).stats().entries["rece-gram"] == 1


def test_rece_gram_comes_from_the_cache_once_computed(cache_on: Path, tiny_model, monkeypatch: pytest.MonkeyPatch):
    from erasekit.methods import rece

    weights = tiny_model.text_projections(True, True)
    G = rece.cached_original_gram(tiny_model, weights)
    assert torch.equal(G, original_gram(weights))
    monkeypatch.setattr(rece, "original_gram", lambda _w: pytest.fail("G recomputed"))
    assert torch.equal(rece.cached_original_gram(tiny_model, weights), G)


def test_cli_cache_info_and_clear(cache_on: Path, tiny_model):
    tiny_model.encode(["dog", "cat"])
    runner = CliRunner(env={"COLUMNS": "200"})
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and str(cache_on) in info.output and "text entries │ 2" in info.output
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and not cache_on.exists()
    assert "text entries" not in runner.invoke(app, ["cache", "info"]).output


def test_cli_no_cache_switches_it_off(cache_on: Path, monkeypatch: pytest.MonkeyPatch):
    result = CliRunner().invoke(app, ["--no-cache", "cache", "info"])
    assert result.exit_code == 0 and "no (ERASEKIT_TEXT_CACHE)" in result.output


def test_a_hooked_text_encoder_always_runs(cache_on: Path, tiny_model):
    """A forward hook may record or change what the encoder sees (DuMo's prompt gate): the cache must not skip it."""
    want = tiny_model.encode(TEXTS)
    seen = []
    handle = tiny_model.text_encoder.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    assert torch.equal(tiny_model.encode(TEXTS), want)
    handle.remove()
    assert seen == [len(set(TEXTS))]
