"""Edits: the fitted result of a method, applied to and removed from a pipeline, saved as one artifact.

An :class:`Edit` does one or both of two things to a pipeline:

* replaces a set of UNet tensors (UCE, RECE, MACE, ESD: new cross-attention K/V or other weights);
* adds modules (GLoCE's gated low-rank modules, DuMo's residual network): a method registers an *attach* function
  under a module kind with :func:`register_modules`; it installs the modules into a pipeline and returns the function
  that takes them out again. Methods own their modules' code, the Edit owns their tensors and lifecycle. The Edit
  knows no method: it finds the attach function of a kind through the entry points ``erasekit.modules`` (kind ->
  module that registers it), which imports that one module and nothing else.

It applies in place, keeps what it changed so that :meth:`Edit.remove` restores the pipeline bit for bit, and refuses
a pipeline whose tensors are not the ones it was fitted on (sha256 fingerprint of the replaced tensors and of the
tensors the modules were fitted against, ``base_names``).

Artifact format (``*.safetensors``): the replacement tensors under their UNet state-dict names, so the file also
loads with ``pipe.unet.load_state_dict(file, strict=False)``; module tensors under ``modules/<name>``; extra tensors
(e.g. RECE's derived embeddings) under ``extras/<name>``; and the metadata as JSON in the safetensors header (key
``erasekit``, the only key, so the same edit always gives the same bytes), mirrored in a ``.json`` file beside it for
people to read. The metadata carries an integrity digest (sha256 of the canonical metadata and of every tensor): a
file changed after erasekit wrote it (a hand-edited header, a changed or added tensor) is refused on load unless the
caller accepts it explicitly (``Edit.load(path, verify=False)``, ``--allow-modified``), and ``erasekit info`` states
the verdict (:attr:`Edit.integrity`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import ArtifactError, BaseModelMismatchError, NumericalError
from .io import atomic_file, check_output
from .models.adapter import ModelAdapter, denoiser_of, tensors_fingerprint
from .registry import Registry

FORMAT = "erasekit.edit/1"
INTACT, MODIFIED, UNVERIFIED, UNSAVED = "intact", "modified", "unverified", "not saved"
INTEGRITY = {
    INTACT: "intact: tensors and metadata are exactly what erasekit wrote",
    MODIFIED: "MODIFIED after erasekit wrote it (integrity digest mismatch), loaded because it was explicitly accepted",
    UNVERIFIED: "unverified: written before erasekit stored integrity digests",
    UNSAVED: "not saved yet",
}
EXTRAS_PREFIX = "extras/"
MODULES_PREFIX = "modules/"

MODULE_GROUP = "erasekit.modules"
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "FLUX.1", "sd3": "SD3"}

Detach = Callable[[], None]
Attach = Callable[[Any, dict[str, torch.Tensor], dict[str, Any]], Detach]


def _import_module_kind(kind: str | None) -> None:
    """Import the module that registers ``kind`` (every known kind for a listing)."""
    for point in entry_points(group=MODULE_GROUP):
        if kind is None or point.name == kind:
            point.load()


MODULE_KINDS: Registry[Attach] = Registry("module kind", loader=_import_module_kind)


def register_modules(kind: str) -> Callable[[Attach], Attach]:
    """Register ``attach(pipe, tensors, spec) -> detach`` for edits whose modules are of ``kind``.

    ``attach`` installs the modules built from ``tensors`` (on the CPU, as saved) and ``spec`` (JSON-able) into
    ``pipe`` without copying it and returns a function that removes them exactly.
    """

    return MODULE_KINDS.register(kind)


def _attach_function(kind: str) -> Attach:
    if kind not in MODULE_KINDS:
        raise ArtifactError(
            f"this edit adds modules of kind '{kind}', which this erasekit ({__version__}) does not know: "
            "was it made by a newer version?"
        )
    return MODULE_KINDS.get(kind)


@dataclass
class Edit:
    """Replacement UNet tensors and/or added modules, plus everything needed to reproduce and audit them.

    ``weights`` maps UNet state-dict names to new tensors; ``modules`` holds the tensors of added modules of kind
    ``module_kind`` (built by the attach function registered for it, with ``module_spec``); ``base_fingerprint`` is
    the sha256 of the base tensors named by ``weights`` and ``base_names`` (see :func:`tensors_fingerprint`);
    ``config`` is the method's full hyper-parameter dict; ``concepts`` the erased and preserved texts; ``info``
    free-form results of fitting (e.g. RECE's selected epoch), deterministic for a seed. ``log`` holds how the fit
    ran (seconds per stage, the step a run resumed from): reported in the run log, never saved, so an artifact's
    bytes depend only on what was fitted. ``integrity`` is the
    verdict of :meth:`load` (one of :data:`INTEGRITY`).
    """

    method: str
    config: dict[str, Any]
    concepts: dict[str, Any]
    weights: dict[str, torch.Tensor]
    base_fingerprint: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    modules: dict[str, torch.Tensor] = field(default_factory=dict)
    module_kind: str | None = None
    module_spec: dict[str, Any] = field(default_factory=dict)
    base_names: list[str] = field(default_factory=list)
    integrity: str = field(default=UNSAVED, compare=False)
    digest: str | None = field(default=None, compare=False)
    log: dict[str, Any] = field(default_factory=dict, compare=False)
    _applied: dict[int, tuple[dict[str, torch.Tensor], Detach | None]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def from_weights(
        cls,
        method: str,
        config: dict[str, Any],
        concepts: dict[str, Any],
        model: ModelAdapter,
        weights: dict[str, torch.Tensor],
        **kwargs: Any,
    ) -> Edit:
        """Package new ``weights`` for ``model``, fingerprinting the tensors they replace."""
        _check_finite(weights, f"the {method} fit")
        originals = model.unet_parameters(list(weights))
        fingerprint = tensors_fingerprint(originals)
        weights = {n: w.detach().to(originals[n].dtype).cpu().contiguous() for n, w in weights.items()}
        kwargs["info"] = {**kwargs.get("info", {}), "family": model.family}
        return cls(method, config, concepts, weights, fingerprint, **kwargs)

    @classmethod
    def from_modules(
        cls,
        method: str,
        config: dict[str, Any],
        concepts: dict[str, Any],
        model: ModelAdapter,
        kind: str,
        tensors: dict[str, torch.Tensor],
        spec: dict[str, Any],
        base_names: list[str],
        weights: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> Edit:
        """Package added modules of ``kind`` (and optional replacement ``weights``) for ``model``.

        ``base_names`` are the UNet tensors the modules were fitted against (e.g. the layers they wrap): they are
        fingerprinted so the modules are never applied to another model.
        """
        weights = weights or {}
        _check_finite({**weights, **tensors}, f"the {method} fit")
        originals = model.unet_parameters(sorted(set(weights) | set(base_names)))
        info = {
            **kwargs.pop("info", {}),
            "base_dtype": str(next(iter(originals.values())).dtype).removeprefix("torch."),
            "family": model.family,
        }
        tensors = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
        weights = {n: w.detach().to(originals[n].dtype).cpu().contiguous() for n, w in weights.items()}
        return cls(
            method,
            config,
            concepts,
            weights,
            tensors_fingerprint(originals),
            modules=tensors,
            module_kind=kind,
            module_spec=spec,
            base_names=sorted(base_names),
            info=info,
            **kwargs,
        )

    # --------------------------------------------------------------- applying
    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, as saved in the artifact."""
        meta = {
            "format": FORMAT,
            "method": self.method,
            "config": self.config,
            "concepts": self.concepts,
            "base_fingerprint": self.base_fingerprint,
            "erasekit_version": self.version,
            "info": self.info,
            "tensors": _describe(self.weights),
        }
        if self.module_kind is not None:
            meta["modules"] = {
                "kind": self.module_kind,
                "spec": self.module_spec,
                "base_names": self.base_names,
                "tensors": _describe(self.modules),
            }
        return meta

    @property
    def base_dtype(self) -> torch.dtype:
        """The dtype of the base model the edit was fitted on (its fingerprint covers the dtype)."""
        if self.weights:
            return next(iter(self.weights.values())).dtype
        return getattr(torch, self.info.get("base_dtype", "float32"))

    def fingerprint(self) -> str:
        """sha256 of everything the edit writes into or adds to a pipeline (keys the evaluation's image cache)."""
        tensors = {
            **self.weights,
            **{MODULES_PREFIX + k: v for k, v in self.modules.items()},
            **{EXTRAS_PREFIX + k: v for k, v in self.extras.items()},
        }
        digest = tensors_fingerprint(tensors)
        if self.module_kind is None:
            return digest
        spec = json.dumps({"kind": self.module_kind, "spec": self.module_spec}, sort_keys=True)
        return hashlib.sha256(f"{digest}|{spec}".encode()).hexdigest()

    def is_applied(self, pipe) -> bool:
        return _denoiser_id(pipe) in self._applied

    def apply(self, pipe, check: bool = True) -> Any:
        """Write the edit into ``pipe``'s UNet in place and return ``pipe``.

        With ``check`` (the default) the pipeline's current tensors must be exactly those the edit was fitted on.
        """
        if self.is_applied(pipe):
            raise ArtifactError("this edit is already applied to this pipeline")
        attach = _attach_function(self.module_kind) if self.module_kind is not None else None
        model = ModelAdapter(pipe)
        self._check_base(model, check)
        originals = model.replace_weights(self.weights)
        detach = attach(pipe, self.modules, self.module_spec) if attach is not None else None
        self._applied[_denoiser_id(pipe)] = (originals, detach)
        return pipe

    def base_weights(self, pipe) -> dict[str, torch.Tensor]:
        """Copies of the tensors this edit replaces, from ``pipe``, which must carry the weights it was fitted on."""
        model = ModelAdapter(pipe)
        if self.is_applied(pipe):
            return {n: t.clone() for n, t in self._applied[_denoiser_id(pipe)][0].items()}
        self._check_base(model, check=True)
        return {n: p.detach().cpu().clone() for n, p in model.unet_parameters(list(self.weights)).items()}

    def _check_base(self, model: ModelAdapter, check: bool) -> None:
        """Refuse another family or architecture, and (with ``check``) other base weights than the fitted ones."""
        family = self.info.get("family")
        if family is not None and family != model.family:
            raise BaseModelMismatchError(
                f"this edit was fitted on an {FAMILY_NAMES.get(family, family)} model and the pipeline is "
                f"{FAMILY_NAMES.get(model.family, model.family)}: an edit applies only to the model it was fitted on"
            )
        params = model.unet_parameters(sorted(set(self.weights) | set(self.base_names)))
        for name in self.weights:
            param = params[name]
            if tuple(param.shape) != tuple(self.weights[name].shape):
                raise BaseModelMismatchError(
                    f"edit tensor '{name}' has shape {tuple(self.weights[name].shape)} but the model's is "
                    f"{tuple(param.shape)}: this edit was made for another model architecture"
                )
        if check:
            current = tensors_fingerprint(params)
            if current != self.base_fingerprint:
                if self.weights and current == tensors_fingerprint({**params, **self.weights}):
                    raise BaseModelMismatchError("the pipeline already carries this edit's weights")
                edit_dtypes = {str(w.dtype) for w in {**self.weights, **self.modules}.values()}
                dtypes = {str(p.dtype) for p in params.values()} - edit_dtypes
                hint = (
                    f" (the pipeline is {dtypes.pop()}; load it in the dtype the edit was fitted in)" if dtypes else ""
                )
                raise BaseModelMismatchError(
                    "this edit was fitted on a different base model: the weights it replaces do not match its "
                    f"fingerprint{hint}"
                )

    def remove(self, pipe) -> Any:
        """Take out the added modules and restore the replaced tensors, bit for bit; return ``pipe``."""
        applied = self._applied.pop(_denoiser_id(pipe), None)
        if applied is None:
            raise ArtifactError("this edit is not applied to this pipeline, so it cannot be removed")
        originals, detach = applied
        if detach is not None:
            detach()
        ModelAdapter(pipe).replace_weights(originals)
        return pipe

    # ------------------------------------------------------------ persisting
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the artifact (``.safetensors`` + ``.json`` beside it) atomically; return the safetensors path."""
        path = check_output(Path(path), overwrite)
        tensors = {
            **self.weights,
            **{MODULES_PREFIX + k: v.contiguous() for k, v in self.modules.items()},
            **{EXTRAS_PREFIX + k: v.contiguous() for k, v in self.extras.items()},
        }
        _check_finite(tensors, f"the {self.method} edit")
        self.digest = _digest(self.metadata(), tensors)
        meta = self.artifact_metadata()
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"erasekit": json.dumps(meta, sort_keys=True)})
        with atomic_file(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.integrity = INTACT
        return path

    def artifact_metadata(self) -> dict[str, Any]:
        """:meth:`metadata` with the integrity digest, as written in the artifact (once saved or loaded)."""
        meta = self.metadata()
        if self.digest is not None:
            meta["integrity"] = {"algorithm": "sha256", "digest": self.digest}
        return meta

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Edit:
        """Read an artifact written by :meth:`save`; any damage is an :class:`ArtifactError`.

        A file whose integrity digest does not match its content is refused, unless ``verify`` is false: then it
        loads with ``integrity == "modified"`` (the caller accepted it, e.g. to inspect it).
        """
        meta, tensors = read_artifact(path)
        stored = dict(tensors)
        extras = _take_prefixed(tensors, EXTRAS_PREFIX)
        modules = _take_prefixed(tensors, MODULES_PREFIX)
        weights = tensors
        module_meta = meta.get("modules") or {}
        if set(meta["tensors"]) != set(weights) or set(module_meta.get("tensors", {})) != set(modules):
            raise ArtifactError(f"artifact '{path}' is inconsistent: its tensors do not match its metadata")
        for name, tensor in {**weights, **modules}.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ArtifactError(f"artifact '{path}' is corrupted: tensor '{name}' contains NaN or infinite values")
        integrity = _verify(meta, stored, path, verify)
        return cls(
            method=meta["method"],
            config=meta["config"],
            concepts=meta["concepts"],
            weights=weights,
            base_fingerprint=meta["base_fingerprint"],
            extras=extras,
            info=meta.get("info", {}),
            version=meta.get("erasekit_version", "unknown"),
            modules=modules,
            module_kind=module_meta.get("kind"),
            module_spec=module_meta.get("spec", {}),
            base_names=module_meta.get("base_names", []),
            integrity=integrity,
            digest=(meta.get("integrity") or {}).get("digest"),
        )

    def export(self, pipe, out: str | Path, overwrite: bool = False, format: str = "diffusers", **options: Any) -> Path:
        """Write this edit, fitted on ``pipe``'s weights, as ``format``; return the path; ``pipe`` is left as it was.

        ``diffusers`` (default): a full diffusers folder (``from_pretrained`` loads it); ``lora``: one LoRA
        ``.safetensors`` (``pipe.load_lora_weights`` loads it; ``options``: ``rank``, ``energy``, ``lora_format``);
        ``single-file``: one SD1.x checkpoint in the original layout (``from_single_file``). See
        :mod:`erasekit.exports`. Edits that add modules cannot be exported: load their artifact with
        :func:`load_edit` instead.
        """
        from .exports import export

        return export(self, pipe, out, format, overwrite=overwrite, **options).path


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """A result that is not finite is never packaged nor saved: it would silently corrupt every image."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NumericalError(
                f"{what} produced NaN or infinite values in '{name}'; nothing was saved. In float16 this is usually "
                "an overflow: fit in float32 (dtype: float32) or bfloat16"
            )


def _describe(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for n, t in tensors.items()}


def _take_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove the tensors named ``prefix...`` from ``tensors`` and return them without the prefix."""
    names = [k for k in tensors if k.startswith(prefix)]
    return {k[len(prefix) :]: tensors.pop(k) for k in names}


# The fields of an artifact's metadata and their JSON types (None: optional).
SCHEMA: dict[str, tuple[type, bool]] = {
    "method": (str, True),
    "config": (dict, True),
    "concepts": (dict, True),
    "base_fingerprint": (str, True),
    "tensors": (dict, True),
    "erasekit_version": (str, False),
    "info": (dict, False),
    "modules": (dict, False),
    "integrity": (dict, False),
}
MODULE_SCHEMA: dict[str, tuple[type, bool]] = {
    "kind": (str, True),
    "spec": (dict, False),
    "base_names": (list, False),
    "tensors": (dict, True),
}


def _check_fields(meta: dict[str, Any], schema: dict[str, tuple[type, bool]], where: str, path: Path) -> None:
    for name, (kind, required) in schema.items():
        if name not in meta:
            if required:
                raise ArtifactError(f"artifact '{path}' metadata lacks the field '{where}{name}'")
        elif not isinstance(meta[name], kind):
            raise ArtifactError(
                f"artifact '{path}' metadata field '{where}{name}' should be a JSON {_JSON_NAMES[kind]}, "
                f"got {type(meta[name]).__name__}"
            )


_JSON_NAMES = {str: "string", dict: "object", list: "array"}


def _digest(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the canonical metadata (without its integrity field) and of every stored tensor."""
    canonical = json.dumps({k: v for k, v in meta.items() if k != "integrity"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{canonical}|{tensors_fingerprint(tensors)}".encode()).hexdigest()


def _verify(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path, verify: bool) -> str:
    """The integrity verdict of a loaded artifact; a mismatch is refused unless ``verify`` is false."""
    stored = meta.get("integrity")
    if stored is None:
        return UNVERIFIED
    if not isinstance(stored.get("digest"), str) or stored.get("algorithm") != "sha256":
        raise ArtifactError(f"artifact '{path}' has a malformed integrity field")
    if stored["digest"] == _digest(meta, tensors):
        return INTACT
    if verify:
        raise ArtifactError(
            f"artifact '{path}' was modified after erasekit wrote it (its integrity digest does not match its "
            "tensors and metadata); refusing it. Inspect it with `erasekit info`, and accept it explicitly "
            "(--allow-modified, allow_modified: true in a run config, Edit.load(path, verify=False)) only if you "
            "trust the change"
        )
    return MODIFIED


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metadata and tensors of an artifact, with one clear error for every way the file can be damaged."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"edit artifact '{path}' not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as exc:  # safetensors raises several unrelated types for damaged files
        raise ArtifactError(f"'{path}' is not a readable safetensors file (corrupted or truncated?): {exc}") from None
    not_ours = ArtifactError(f"'{path}' is a safetensors file but not an erasekit edit (no '{FORMAT}' metadata)")
    if "erasekit" not in header:
        raise not_ours
    try:
        meta = json.loads(header["erasekit"])
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"'{path}' has corrupted metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"'{path}' has corrupted metadata: expected a JSON object")
    if FORMAT not in (meta.get("format"), header.get("format")):  # erasekit 0.1 kept the format beside the JSON
        raise not_ours
    _check_fields(meta, SCHEMA, "", path)
    if "modules" in meta:
        _check_fields(meta["modules"], MODULE_SCHEMA, "modules.", path)
    return meta, tensors


def load_edit(pipe, path: str | Path, check: bool = True, verify: bool = True) -> Edit:
    """Load the artifact at ``path`` and apply it to ``pipe``; return the Edit (``edit.remove(pipe)`` undoes it).

    ``check``: refuse a pipeline with other base weights; ``verify``: refuse a file modified after it was written.
    """
    edit = Edit.load(path, verify=verify)
    edit.apply(pipe, check=check)
    return edit


def _denoiser_id(pipe: Any) -> int:
    """Which network an applied edit is recorded against."""
    return id(denoiser_of(pipe)[1])
