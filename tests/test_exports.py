"""Exports: a weight edit as a LoRA that diffusers loads reproduces the erasekit-applied edit (exactly at full rank,
within the reported error when truncated); kohya keys name every edited layer; the single-file checkpoint loads with
from_single_file into the edited pipeline bit for bit; module edits are refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FAST
from safetensors import safe_open
from safetensors.torch import load_file
from test_edit_modules import _module_edit
from typer.testing import CliRunner

from erasekit import Edit, __version__, erase, load_pipeline
from erasekit.cli import app
from erasekit.errors import ArtifactError, BaseModelMismatchError, ConfigError
from erasekit.exports import export, kohya_name
from erasekit.models import ModelAdapter

DOG = [{"text": "dog", "kind": "object", "synonyms": ["puppy"]}]
FULL_RANK = 10_000  # capped at each layer's full rank


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from erasekit.models.tiny import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def uce_edit(tiny_base) -> Edit:
    return erase(load_pipeline(tiny_base), DOG, preserve=["cat"])


def unet_output(pipe, prompt: str = "a photo of a dog") -> torch.Tensor:
    """The UNet's noise prediction for one fixed latent, timestep and prompt."""
    latents = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(torch.tensor(ids))[0]
        return pipe.unet(latents, 10, cond).sample


def outputs(edit: Edit, base_path, lora_path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UNet outputs of the base model, of the erasekit-applied edit, and of the base with the LoRA diffusers loaded."""
    base = unet_output(load_pipeline(base_path))
    edited = unet_output(edit.apply(load_pipeline(base_path)))
    loaded = load_pipeline(base_path)
    loaded.load_lora_weights(str(lora_path))
    return base, edited, unet_output(loaded)


def lora_gap(edit: Edit, base_path, lora_path) -> float:
    """``|out_lora - out_edit| / |out_edit - out_base|``: how much of the edit's effect the LoRA misses."""
    base, edited, loaded = outputs(edit, base_path, lora_path)
    return float((loaded - edited).norm() / (edited - base).norm())


def header(path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["erasekit"])


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_full_rank_lora_loaded_by_diffusers_reproduces_the_edit(uce_edit, tiny_base, tmp_path, layout):
    path = tmp_path / "dog.safetensors"
    result = export(uce_edit, load_pipeline(tiny_base), path, "lora", rank=FULL_RANK, lora_format=layout)
    assert result.max_error < 1e-6
    assert lora_gap(uce_edit, tiny_base, path) < 1e-5


@pytest.mark.parametrize("model", ["erasekit:tiny-sd2", "erasekit:tiny-xl"])
def test_full_rank_lora_in_both_layouts_reproduces_the_edit_on_sd2_and_sdxl(model, tmp_path):
    def image(pipe):
        generator = torch.Generator().manual_seed(0)
        return pipe(
            "a photo of a dog", num_inference_steps=2, height=32, width=32, generator=generator, output_type="np"
        ).images

    edit = erase(load_pipeline(model), DOG, preserve=["cat"])
    edited, base = image(edit.apply(load_pipeline(model))), image(load_pipeline(model))
    for layout in ("diffusers", "kohya"):
        path = tmp_path / f"dog-{layout}.safetensors"
        export(edit, load_pipeline(model), path, "lora", rank=FULL_RANK, lora_format=layout)
        loaded = load_pipeline(model)
        loaded.load_lora_weights(str(path))
        assert abs(image(loaded) - edited).max() < 1e-5 < abs(edited - base).max(), layout
    sgm = [key for key in load_file(str(path)) if "_input_blocks_" in key or "_output_blocks_" in key]
    assert bool(sgm) == (model == "erasekit:tiny-xl")  # SDXL kohya files name the original (sgm) blocks


def test_truncated_lora_misses_no_more_of_the_edit_than_its_reported_error(uce_edit, tiny_base, tmp_path):
    path = tmp_path / "dog-r1.safetensors"
    result = export(uce_edit, load_pipeline(tiny_base), path, "lora", rank=1)
    assert set(result.ranks.values()) == {1}
    assert 0.01 < lora_gap(uce_edit, tiny_base, path) <= result.max_error
    assert header(path)["lora"]["max_relative_error"] == pytest.approx(result.max_error)


def test_energy_threshold_picks_the_smallest_rank_that_keeps_that_share(uce_edit, tiny_base, tmp_path):
    result = export(uce_edit, load_pipeline(tiny_base), tmp_path / "e.safetensors", "lora", energy=0.99)
    base = uce_edit.base_weights(load_pipeline(tiny_base))
    for layer, rank in result.ranks.items():
        delta = (uce_edit.weights[f"{layer}.weight"] - base[f"{layer}.weight"]).double()
        energy = torch.linalg.svdvals(delta) ** 2 / (delta**2).sum()
        assert energy[:rank].sum() >= 0.99 > energy[: rank - 1].sum()
        assert result.errors[layer] == pytest.approx(float(energy[rank:].sum().sqrt()), rel=1e-4)


def test_kohya_keys_map_back_to_every_edited_layer(uce_edit, tiny_base, tmp_path):
    path = tmp_path / "kohya.safetensors"
    export(uce_edit, load_pipeline(tiny_base), path, "lora", lora_format="kohya")
    tensors = load_file(str(path))
    unet = load_pipeline(tiny_base).unet
    modules = {kohya_name(name): name for name, _ in unet.named_modules()}
    layers = {modules[key.split(".")[0]] for key in tensors}
    assert layers == {name.rsplit(".", 1)[0] for name in uce_edit.weights}
    for layer in layers:
        key = kohya_name(layer)
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        assert float(tensors[f"{key}.alpha"]) == down.shape[0] == up.shape[1]


def test_single_file_checkpoint_loads_with_from_single_file_into_the_edited_pipeline(uce_edit, tiny_base, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_base)
    path = export(uce_edit, pipe, tmp_path / "erased.safetensors", "single-file").path
    assert not uce_edit.is_applied(pipe)
    with safe_open(str(path), framework="pt") as handle:
        assert "model.diffusion_model.input_blocks.0.0.weight" in handle.keys()  # noqa: SIM118 (safe_open API)
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny_base), local_files_only=True)
    edited = uce_edit.apply(load_pipeline(tiny_base))
    for component in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(edited, component).state_dict(), getattr(loaded, component).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), component
    assert header(path)["method"] == "uce"


@pytest.mark.parametrize("model", ["erasekit:tiny-sd2", "erasekit:tiny-xl"])
def test_single_file_of_sd2_and_sdxl_loads_into_the_edited_pipeline(model, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    base = load_pipeline(model)
    folder = tmp_path / "base"
    base.save_pretrained(folder)
    edit = erase(load_pipeline(model), DOG, preserve=["cat"])
    path = export(edit, base, tmp_path / "erased.safetensors", "single-file").path
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    openclip = "cond_stage_model.model." if model == "erasekit:tiny-sd2" else "conditioner.embedders.1.model."
    assert f"{openclip}transformer.resblocks.0.attn.in_proj_weight" in keys  # OpenCLIP's fused q/k/v
    cls = StableDiffusionXLPipeline if model == "erasekit:tiny-xl" else StableDiffusionPipeline
    loaded = cls.from_single_file(str(path), config=str(folder), local_files_only=True)
    edited = edit.apply(load_pipeline(model))
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if model == "erasekit:tiny-xl" else [])
    for component in components:
        ours, theirs = getattr(edited, component).state_dict(), getattr(loaded, component).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), component


def test_single_file_refuses_other_families_before_any_work(uce_edit, tiny_base, tmp_path):
    edit = Edit.load(uce_edit.save(tmp_path / "dog.safetensors"))
    edit.info["family"] = "flux"
    with pytest.raises(ConfigError, match=r"SD1\.x, SD2\.x and SDXL"):
        edit.export(load_pipeline(tiny_base), tmp_path / "x.safetensors", format="single-file")
    assert not (tmp_path / "x.safetensors").exists()


def test_every_export_says_what_it_erases(uce_edit, tiny_base, tmp_path):
    lora = export(uce_edit, load_pipeline(tiny_base), tmp_path / "l.safetensors", "lora").path
    folder = export(uce_edit, load_pipeline(tiny_base), tmp_path / "folder").path
    single = export(uce_edit, load_pipeline(tiny_base), tmp_path / "s.safetensors", "single-file").path
    for meta in (header(lora), header(single), json.loads((folder / "erasekit_edit.json").read_text())):
        assert meta["method"] == "uce" and meta["concepts"] == uce_edit.concepts
        assert meta["base_fingerprint"] == uce_edit.base_fingerprint and meta["erasekit_version"] == __version__


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # PEFT: no fuse_lora on bias-less layers; expected
def test_esd_x_bias_changes_travel_in_the_diffusers_layout_only(tiny_base, tmp_path):
    edit = erase(load_pipeline(tiny_base), DOG, method="esd", params={**FAST["esd"], "train_method": "x"})
    assert any(name.endswith(".bias") for name in edit.weights)
    path = tmp_path / "esd.safetensors"
    export(edit, load_pipeline(tiny_base), path, "lora", rank=FULL_RANK)
    base, edited, loaded = outputs(edit, tiny_base, path)
    assert not torch.equal(edited, base)
    torch.testing.assert_close(loaded, edited)  # a 2-step ESD barely moves: compare to float tolerance, not its effect
    with pytest.raises(ArtifactError, match=r"\.bias.*--lora-format diffusers"):
        export(edit, load_pipeline(tiny_base), tmp_path / "k.safetensors", "lora", lora_format="kohya")
    assert not (tmp_path / "k.safetensors").exists()


def test_changes_a_lora_cannot_hold_are_refused_by_name(tiny_base, tmp_path):
    pipe = load_pipeline(tiny_base)
    model = ModelAdapter(pipe)
    conv = model.unet_parameters(["conv_in.weight"])["conv_in.weight"]
    edit = Edit.from_weights("esd", {}, {}, model, {"conv_in.weight": conv + 1})
    with pytest.raises(ArtifactError, match=r"conv_in\.weight.*--format diffusers"):
        export(edit, pipe, tmp_path / "x.safetensors", "lora")


def test_module_edits_cannot_be_a_lora(tiny_base, tmp_path):
    pipe = load_pipeline(tiny_base)
    with pytest.raises(ArtifactError, match=r"cannot hold.*erasekit\.load_edit"):
        _module_edit(pipe).export(pipe, tmp_path / "m.safetensors", format="lora")


def test_bad_export_options_are_one_line_errors_that_write_nothing(uce_edit, tiny_base, other_tiny_path, tmp_path):
    pipe = load_pipeline(tiny_base)
    for options, match in [
        ({"format": "ckpt"}, "--format"),
        ({"format": "lora", "lora_format": "comfy"}, "--lora-format"),
        ({"format": "lora", "rank": 0}, "--rank"),
        ({"format": "lora", "energy": 1.5}, "--energy"),
    ]:
        with pytest.raises(ConfigError, match=match):
            uce_edit.export(pipe, tmp_path / "x.safetensors", **options)
    with pytest.raises(ConfigError, match=r"one \.safetensors file"):
        uce_edit.export(pipe, tmp_path / "folder", format="lora")
    with pytest.raises(BaseModelMismatchError, match="different base model"):
        uce_edit.export(load_pipeline(other_tiny_path), tmp_path / "x.safetensors", format="lora")
    assert not list(tmp_path.iterdir())


def test_cli_exports_a_lora_and_prints_each_layers_error(uce_edit, tiny_base, tmp_path):
    artifact = uce_edit.save(tmp_path / "dog.safetensors")
    out = tmp_path / "dog-lora.safetensors"
    args = ["export", "-e", str(artifact), "-m", str(tiny_base), "-o", str(out), "--format", "lora"]
    result = CliRunner().invoke(app, [*args, "--lora-format", "kohya", "--rank", "4"])
    assert result.exit_code == 0, result.output
    lora = header(out)["lora"]
    assert lora["layout"] == "kohya" and set(lora["ranks"].values()) == {4}
    assert f"max relative error {lora['max_relative_error']:.2e} over {len(lora['ranks'])} layers" in result.output
    refused = CliRunner().invoke(app, [*args, "--overwrite", "--rank", "0"])
    assert refused.exit_code == 2 and "--rank" in refused.output
