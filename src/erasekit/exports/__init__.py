"""Exports: an edit in the formats people generate with (a diffusers folder, a LoRA file, a single-file checkpoint).

* ``diffusers``: the base pipeline with the edit applied, saved with ``save_pretrained`` (``from_pretrained`` loads it).
* ``lora``: the edit's weight change ``W_new - W_old`` of every Linear layer as a low-rank pair ``B A``. A closed-form
  K/V edit is ``W_new = W_old T`` (UCE, RECE, MACE), so its change ``W_old (T - I)`` has at most the rank of ``T - I``;
  a trained edit (ESD) has a full-rank change. Each change is factored by truncated SVD (Eckart-Young: the best rank-r
  approximation in Frobenius norm), at a given rank or at the smallest rank that keeps a share ``energy`` of the
  change's squared Frobenius norm; the relative error ``||dW - B A||_F / ||dW||_F`` of every tensor is stored in the
  file's metadata. Two key layouts: diffusers/PEFT (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, loaded by
  ``pipe.load_lora_weights``; a Linear bias change is exact as ``lora_B.bias``, PEFT's ``lora_bias``) and kohya
  (``lora_unet_<module_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, what AUTOMATIC1111,
  Forge and ComfyUI load; SDXL's spell the original sgm blocks, ``lora_unet_input_blocks_4_1_...``). A change a LoRA
  cannot carry (a convolution, a norm, a bias in the kohya layout) is refused with the tensors named rather than
  silently left out: the LoRA would not erase what the edit does.
* ``single-file``: the edited SD1.x, SD2.x or SDXL pipeline as one ``.safetensors`` in the original LDM layout
  (:mod:`.ldm`), which ``from_single_file`` and the web UIs load.

Module edits (GLoCE, DuMo) add layers, not weights: no format can hold them; their artifact is the export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from ..errors import ArtifactError, ConfigError
from ..io import atomic_dir, atomic_file, check_output
from ..models import denoiser_of
from . import ldm

if TYPE_CHECKING:
    from ..edits import Edit

FORMATS = ("diffusers", "lora", "single-file")
FILE_FORMATS = ("lora", "single-file")  # one .safetensors file, not a folder
LORA_LAYOUTS = ("diffusers", "kohya")
DEFAULT_ENERGY = 0.999
METADATA_KEY = "erasekit"


@dataclass
class LoraFactor:
    """``B @ A`` approximates one Linear layer's weight change; ``bias`` is its exact bias change (if any)."""

    A: torch.Tensor  # (rank, in_features)
    B: torch.Tensor  # (out_features, rank)
    bias: torch.Tensor | None
    error: float  # ||dW - B A||_F / ||dW||_F


@dataclass
class Export:
    """Where an export was written and, for a LoRA, the rank and relative error of every factored layer."""

    path: Path
    format: str
    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def check_exportable(
    edit: Edit,
    format: str = "diffusers",
    lora_format: str | None = None,
    rank: int | None = None,
    energy: float | None = None,
) -> None:
    """Refuse, before any work, bad options and an export that cannot hold ``edit`` (one line that says what to do).

    ``rank``, ``energy`` and ``lora_format`` are LoRA options: given with another format they are refused, not ignored.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}, got '{format}'")
    if format != "lora":
        options = {"rank": rank, "energy": energy, "lora-format": lora_format}
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise ConfigError(f"--{given[0]}: applies to --format lora only, not --format {format}")
    _check_lora_options(rank, DEFAULT_ENERGY if energy is None else energy)
    lora_format = lora_format or "diffusers"
    if lora_format not in LORA_LAYOUTS:
        raise ConfigError(f"--lora-format: must be one of {', '.join(LORA_LAYOUTS)}, got '{lora_format}'")
    if edit.module_kind is not None:
        holder = {"diffusers": "a plain diffusers folder", "lora": "a LoRA", "single-file": "a checkpoint"}[format]
        raise ArtifactError(
            f"a {edit.method} edit adds modules ({edit.module_kind}) that {holder} cannot hold: "
            "ship the .safetensors artifact and apply it with erasekit.load_edit(pipe, path)"
        )
    if format == "lora" and lora_format == "kohya" and edit.info.get("family", "sd1") not in ldm.TEXT_PREFIXES:
        raise ConfigError(
            f"--lora-format kohya: written for SD1.x, SD2.x and SDXL, not the '{edit.info['family']}' family; "
            "use --lora-format diffusers"
        )
    if format == "single-file" and edit.info.get("family", "sd1") not in ldm.TEXT_PREFIXES:
        raise ConfigError(
            f"--format single-file: written for SD1.x, SD2.x and SDXL, not the '{edit.info['family']}' family; "
            "use --format diffusers"
        )


def export(
    edit: Edit,
    pipe: Any,
    out: str | Path,
    format: str = "diffusers",
    *,
    overwrite: bool = False,
    rank: int | None = None,
    energy: float | None = None,
    lora_format: str | None = None,
) -> Export:
    """Write ``edit`` (fitted on ``pipe``'s base weights) to ``out`` in ``format``; ``pipe`` is left as it was.

    ``rank``, ``energy`` (default :data:`DEFAULT_ENERGY`) and ``lora_format`` (default ``diffusers``) are LoRA
    options: given with another format they are refused rather than ignored.
    """
    check_exportable(edit, format, lora_format, rank, energy)
    if format == "lora":
        energy = DEFAULT_ENERGY if energy is None else energy
        layout = lora_format or "diffusers"
        return export_lora(edit, pipe, out, overwrite=overwrite, rank=rank, energy=energy, layout=layout)
    if format == "single-file":
        return export_single_file(edit, pipe, out, overwrite=overwrite)
    return export_diffusers(edit, pipe, out, overwrite=overwrite)


def _file_output(out: str | Path, overwrite: bool, what: str) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--output: {what} is one .safetensors file, got '{out}'")
    return check_output(out, overwrite)


def export_single_file(edit: Edit, pipe: Any, out: str | Path, overwrite: bool = False) -> Export:
    """Write the pipeline with the edit applied as one checkpoint in the original LDM layout (SD1.x, SD2.x, SDXL).

    ``StableDiffusionPipeline.from_single_file(out, config=<the base model's diffusers folder or hub id>)`` loads it
    (``StableDiffusionXLPipeline`` for SDXL); the header key ``erasekit`` says what it erases.
    """
    check_exportable(edit, "single-file")
    out = _file_output(out, overwrite, "a single-file checkpoint")
    applied_here = not edit.is_applied(pipe)
    if applied_here:
        edit.apply(pipe)
    try:
        tensors = ldm.ldm_state_dict(pipe, edit.info.get("family", "sd1"))
    finally:
        if applied_here:
            edit.remove(pipe)
    meta = export_metadata(edit, format="erasekit.single-file/1")
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return Export(out, "single-file")


def export_diffusers(edit: Edit, pipe: Any, out_dir: str | Path, overwrite: bool = False) -> Export:
    """Save ``pipe`` with the edit applied as a full diffusers folder, with the edit's metadata beside it."""
    check_exportable(edit, "diffusers")
    out_dir = check_output(Path(out_dir), overwrite, folder=True)
    applied_here = not edit.is_applied(pipe)
    if applied_here:
        edit.apply(pipe)
    try:
        with atomic_dir(out_dir) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / "erasekit_edit.json").write_text(json.dumps(edit.metadata(), indent=2) + "\n", encoding="utf-8")
    finally:
        if applied_here:
            edit.remove(pipe)
    return Export(out_dir, "diffusers")


def _check_lora_options(rank: int | None, energy: float) -> None:
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"--rank: must be a positive integer, got {rank!r}")
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"--energy: must be in (0, 1] (the share of each change's squared norm kept), got {energy}")


def lora_factors(
    edit: Edit,
    pipe: Any,
    rank: int | None = None,
    energy: float = DEFAULT_ENERGY,
    with_bias: bool = True,
    uniform: bool = False,
) -> dict[str, LoraFactor]:
    """The low-rank factors of every Linear layer ``edit`` changes, keyed by module path (``...attn2.to_k``).

    ``pipe`` must carry the weights the edit was fitted on (checked by fingerprint). Layers whose change is exactly zero
    are left out (nothing to add). A change no LoRA can carry raises, naming the tensors. ``uniform`` gives every
    layer the largest of their ranks: kohya files carry one ``alpha`` per layer, and diffusers' kohya reader applies
    the most common one to every layer, so equal ranks keep every layer's scale ``alpha / rank`` at 1 everywhere.
    """
    _check_lora_options(rank, energy)
    base = edit.base_weights(pipe)
    _, denoiser = denoiser_of(pipe)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    unexpressible = []
    for name in sorted(edit.weights):
        module_name, _, kind = name.rpartition(".")
        module = denoiser.get_submodule(module_name)
        if isinstance(module, torch.nn.Linear) and (kind == "weight" or (kind == "bias" and with_bias)):
            modules.setdefault(module_name, {})[kind] = edit.weights[name].double() - base[name].double()
        elif torch.equal(edit.weights[name], base[name]):
            continue
        else:
            unexpressible.append(name)
    if unexpressible:
        what = "Linear weights" + (" and biases" if with_bias else "")
        raise ArtifactError(
            f"a LoRA holds changes of {what} only; this {edit.method} edit also changes {len(unexpressible)} other "
            f"tensor(s) ({', '.join(unexpressible[:3])}{', ...' if len(unexpressible) > 3 else ''}): "
            "export it with --format diffusers"
            + (" or --lora-format diffusers (which carries bias changes)" if not with_bias else "")
        )
    dtype = edit.base_dtype
    changes = {}
    for module_name, delta in modules.items():
        bias = delta.get("bias")
        bias = bias.to(dtype) if bias is not None and bias.any() else None
        weight = delta.get("weight")
        if weight is None:  # only the bias changed: a zero pair carries it
            weight = torch.zeros_like(denoiser.get_submodule(module_name).weight, dtype=torch.float64, device="cpu")
        if weight.any() or bias is not None:
            changes[module_name] = (torch.linalg.svd(weight, full_matrices=False), weight, bias)
    ranks = {m: _rank(svd[1], rank, energy) for m, (svd, _, _) in changes.items()}
    if uniform and ranks:
        top = max(ranks.values())
        ranks = {m: min(top, svd[1].numel()) for m, (svd, _, _) in changes.items()}
    return {m: _truncate(*changes[m], ranks[m], dtype) for m in changes}


def _rank(S: torch.Tensor, rank: int | None, energy: float) -> int:
    """``rank`` (capped at full rank), else the smallest rank whose singular values keep ``energy`` of ``sum S^2``."""
    if rank is not None:
        return min(rank, S.numel())
    total = float((S**2).sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(S**2, 0) / total
    return min(int((kept < energy - 1e-12).sum()) + 1, S.numel())


def _truncate(
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    delta: torch.Tensor,
    bias: torch.Tensor | None,
    r: int,
    dtype: torch.dtype,
) -> LoraFactor:
    """The rank-``r`` factors ``B = U_r S_r^1/2``, ``A = S_r^1/2 V_r^T`` of ``delta``, stored in ``dtype``."""
    U, S, Vh = svd
    root = S[:r].sqrt()
    B = (U[:, :r] * root).to(dtype).contiguous()
    A = (root[:, None] * Vh[:r]).to(dtype).contiguous()
    norm = float(torch.linalg.matrix_norm(delta))
    residual = float(torch.linalg.matrix_norm(delta - B.double() @ A.double()))
    return LoraFactor(A, B, bias, residual / norm if norm > 0 else 0.0)


def kohya_name(module_name: str, sgm_config: dict[str, Any] | None = None) -> str:
    """A UNet module's kohya LoRA name.

    SD1.x/SD2.x kohya files spell diffusers' path (``down_blocks.0...attn2.to_k`` ->
    ``lora_unet_down_blocks_0_..._attn2_to_k``); SDXL ones spell the original (sgm) block path
    (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``), numbered from the UNet's config
    (``sgm_config``), which diffusers' kohya reader maps back to the diffusers blocks.
    """
    if sgm_config is not None:
        module_name = ldm.unet_key(f"{module_name}.weight", sgm_config).removesuffix(".weight")
    return "lora_unet_" + module_name.replace(".", "_")


def lora_tensors(
    factors: dict[str, LoraFactor], layout: str, sgm_config: dict[str, Any] | None = None, component: str = "unet"
) -> dict[str, torch.Tensor]:
    """The LoRA file's tensors in ``layout`` (``diffusers`` or ``kohya``; ``sgm_config``: see :func:`kohya_name`);
    diffusers keys start with the edited ``component`` (``unet``, or FLUX's ``transformer``)."""
    tensors = {}
    with_bias = any(f.bias is not None for f in factors.values())
    for module_name, f in factors.items():
        if layout == "kohya":
            key = kohya_name(module_name, sgm_config)
            tensors[f"{key}.lora_down.weight"] = f.A
            tensors[f"{key}.lora_up.weight"] = f.B
            tensors[f"{key}.alpha"] = torch.tensor(float(f.A.shape[0]), dtype=f.A.dtype)  # alpha / rank = scale 1
        else:
            tensors[f"{component}.{module_name}.lora_A.weight"] = f.A
            tensors[f"{component}.{module_name}.lora_B.weight"] = f.B
            if with_bias:  # PEFT's lora_bias is all or nothing: every layer needs one (zero where unchanged)
                bias = f.bias if f.bias is not None else torch.zeros(f.B.shape[0], dtype=f.B.dtype)
                tensors[f"{component}.{module_name}.lora_B.bias"] = bias
    return tensors


def export_metadata(edit: Edit, **extra: Any) -> dict[str, Any]:
    """What a shared file says about itself: method, concepts, base-model fingerprint, erasekit version (+ extra)."""
    return {
        "method": edit.method,
        "concepts": edit.concepts,
        "base_fingerprint": edit.base_fingerprint,
        "base_model": edit.info.get("model"),
        "family": edit.info.get("family"),
        "erasekit_version": edit.version,
        "config": edit.config,
        **extra,
    }


def export_lora(
    edit: Edit,
    pipe: Any,
    out: str | Path,
    *,
    overwrite: bool = False,
    rank: int | None = None,
    energy: float = DEFAULT_ENERGY,
    layout: str = "diffusers",
) -> Export:
    """Write the edit as one LoRA ``.safetensors`` file in ``layout``; metadata under the header key ``erasekit``."""
    check_exportable(edit, "lora", layout, rank, energy)
    out = _file_output(out, overwrite, "a LoRA")
    kohya = layout == "kohya"
    factors = lora_factors(edit, pipe, rank=rank, energy=energy, with_bias=not kohya, uniform=kohya)
    if not factors:
        raise ArtifactError(f"this {edit.method} edit changes no weight of the base model: there is no LoRA to write")
    ranks = {m: int(f.A.shape[0]) for m, f in factors.items()}
    errors = {m: f.error for m, f in factors.items()}
    lora = {
        "layout": layout,
        "rank": rank if rank is not None else f"energy {energy}",
        "ranks": ranks,
        "relative_errors": errors,
        "max_relative_error": max(errors.values()),
    }
    meta = export_metadata(edit, format="erasekit.lora/1", lora=lora)
    with atomic_file(out) as tmp:
        sgm = dict(pipe.unet.config) if kohya and edit.info.get("family") == "sdxl" else None
        metadata = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
        component = denoiser_of(pipe)[0]
        save_file(lora_tensors(factors, layout, sgm, component), str(tmp), metadata=metadata)
    return Export(out, "lora", ranks, errors)
