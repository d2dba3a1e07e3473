"""Edits: the fitted result of a method, applied to and removed from a pipeline, saved as one artifact.

An :class:`Edit` replaces a set of UNet tensors (for UCE, RECE and other closed forms: the cross-attention K/V
weights). It applies in place, keeps the originals so that :meth:`Edit.remove` restores them bit for bit, and refuses
a pipeline whose tensors are not the ones it was fitted on (sha256 fingerprint).

Artifact format (``*.safetensors``): the replacement tensors under their UNet state-dict names, so the file also
loads with ``pipe.unet.load_state_dict(file, strict=False)``; extra tensors (e.g. RECE's derived embeddings) under
``extras/<name>``; and the metadata as JSON in the safetensors header (key ``erasekit``), mirrored in a ``.json``
file beside it for people to read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import ArtifactError, BaseModelMismatchError
from .io import atomic_dir, atomic_file, check_output
from .models.adapter import ModelAdapter, tensors_fingerprint

FORMAT = "erasekit.edit/1"
EXTRAS_PREFIX = "extras/"


@dataclass
class Edit:
    """Replacement UNet tensors plus everything needed to reproduce and audit them.

    ``weights`` maps UNet state-dict names to new tensors; ``base_fingerprint`` is the sha256 of the tensors they
    replace (see :func:`tensors_fingerprint`); ``config`` is the method's full hyper-parameter dict; ``concepts`` the
    erased and preserved texts; ``info`` free-form results of fitting (e.g. RECE's selected epoch).
    """

    method: str
    config: dict[str, Any]
    concepts: dict[str, Any]
    weights: dict[str, torch.Tensor]
    base_fingerprint: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    _originals: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

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
        originals = model.unet_parameters(list(weights))
        fingerprint = tensors_fingerprint(originals)
        weights = {n: w.detach().to(originals[n].dtype).cpu().contiguous() for n, w in weights.items()}
        return cls(method, config, concepts, weights, fingerprint, **kwargs)

    # --------------------------------------------------------------- applying
    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, as saved in the artifact."""
        return {
            "format": FORMAT,
            "method": self.method,
            "config": self.config,
            "concepts": self.concepts,
            "base_fingerprint": self.base_fingerprint,
            "erasekit_version": self.version,
            "info": self.info,
            "tensors": {
                n: {"shape": list(w.shape), "dtype": str(w.dtype).replace("torch.", "")}
                for n, w in self.weights.items()
            },
        }

    def is_applied(self, pipe) -> bool:
        return id(pipe.unet) in self._originals

    def apply(self, pipe, check: bool = True) -> Any:
        """Write the edit into ``pipe``'s UNet in place and return ``pipe``.

        With ``check`` (the default) the pipeline's current tensors must be exactly those the edit was fitted on.
        """
        if self.is_applied(pipe):
            raise ArtifactError("this edit is already applied to this pipeline")
        params = ModelAdapter(pipe).unet_parameters(list(self.weights))
        for name, param in params.items():
            if tuple(param.shape) != tuple(self.weights[name].shape):
                raise BaseModelMismatchError(
                    f"edit tensor '{name}' has shape {tuple(self.weights[name].shape)} but the model's is "
                    f"{tuple(param.shape)}: this edit was made for another model architecture"
                )
        if check:
            current = tensors_fingerprint(params)
            if current != self.base_fingerprint:
                if current == tensors_fingerprint(self.weights):
                    raise BaseModelMismatchError("the pipeline already carries this edit's weights")
                dtypes = {str(p.dtype) for p in params.values()} - {str(w.dtype) for w in self.weights.values()}
                hint = (
                    f" (the pipeline is {dtypes.pop()}; load it in the dtype the edit was fitted in)" if dtypes else ""
                )
                raise BaseModelMismatchError(
                    "this edit was fitted on a different base model: the weights it replaces do not match its "
                    f"fingerprint{hint}"
                )
        self._originals[id(pipe.unet)] = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.weights[name].to(param.device, param.dtype))
        return pipe

    def remove(self, pipe) -> Any:
        """Restore the tensors :meth:`apply` replaced, bit for bit, and return ``pipe``."""
        originals = self._originals.pop(id(pipe.unet), None)
        if originals is None:
            raise ArtifactError("this edit is not applied to this pipeline, so it cannot be removed")
        params = ModelAdapter(pipe).unet_parameters(list(originals))
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(originals[name])
        return pipe

    # ------------------------------------------------------------ persisting
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the artifact (``.safetensors`` + ``.json`` beside it) atomically; return the safetensors path."""
        path = check_output(Path(path), overwrite)
        tensors = {**self.weights, **{EXTRAS_PREFIX + k: v.contiguous() for k, v in self.extras.items()}}
        meta = self.metadata()
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "erasekit": json.dumps(meta)})
        with atomic_file(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """Read an artifact written by :meth:`save`; any damage is an :class:`ArtifactError`."""
        meta, tensors = read_artifact(path)
        weights = {k: v for k, v in tensors.items() if not k.startswith(EXTRAS_PREFIX)}
        extras = {k[len(EXTRAS_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRAS_PREFIX)}
        listed = set(meta.get("tensors", {}))
        if listed != set(weights):
            raise ArtifactError(f"artifact '{path}' is inconsistent: its tensors do not match its metadata")
        for name, tensor in weights.items():
            if not torch.isfinite(tensor).all():
                raise ArtifactError(f"artifact '{path}' is corrupted: tensor '{name}' contains NaN or infinite values")
        try:
            return cls(
                method=meta["method"],
                config=meta["config"],
                concepts=meta["concepts"],
                weights=weights,
                base_fingerprint=meta["base_fingerprint"],
                extras=extras,
                info=meta.get("info", {}),
                version=meta.get("erasekit_version", "unknown"),
            )
        except KeyError as exc:
            raise ArtifactError(f"artifact '{path}' metadata lacks the field {exc}") from None

    def export(self, pipe, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Save ``pipe`` with this edit applied as a full diffusers folder (``from_pretrained`` loads it).

        The pipeline is left as it was: the edit is applied for the save and removed afterwards.
        """
        out_dir = check_output(Path(out_dir), overwrite)
        applied_here = not self.is_applied(pipe)
        if applied_here:
            self.apply(pipe)
        try:
            with atomic_dir(out_dir) as tmp:
                pipe.save_pretrained(tmp, safe_serialization=True)
                (tmp / "erasekit_edit.json").write_text(json.dumps(self.metadata(), indent=2) + "\n", encoding="utf-8")
        finally:
            if applied_here:
                self.remove(pipe)
        return out_dir


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
    if header.get("format") != FORMAT or "erasekit" not in header:
        raise ArtifactError(f"'{path}' is a safetensors file but not an erasekit edit (no '{FORMAT}' metadata)")
    try:
        meta = json.loads(header["erasekit"])
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"'{path}' has corrupted metadata: {exc}") from None
    return meta, tensors


def load_edit(pipe, path: str | Path, check: bool = True) -> Edit:
    """Load the artifact at ``path`` and apply it to ``pipe``; return the Edit (``edit.remove(pipe)`` undoes it)."""
    edit = Edit.load(path)
    edit.apply(pipe, check=check)
    return edit
