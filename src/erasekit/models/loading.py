"""Load a diffusers text-to-image pipeline from a local folder, a hub id or a registered name.

Registered names (``erasekit:<name>`` or ``erasekit:<name>-<variant>``) let the demo and tests run with no download:
``erasekit:tiny`` is a tiny random SD1.x-layout pipeline (:mod:`erasekit.models.tiny`); packages add their own
through :data:`MODELS` (the benchmark world registers ``erasekit:world`` as a plugin). Derived files are cached under
``$ERASEKIT_CACHE`` (default ``~/.cache/erasekit``).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from ..errors import ConfigError, ModelLayoutError
from ..registry import Registry
from ..validation import check_device

BUILTIN_PREFIX = "erasekit:"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The dtypes a config may name."""

MODELS: Registry[Callable[[str | None], Path]] = Registry(
    "built-in model", loader=lambda _: importlib.import_module(".tiny", __package__)
)
"""``name -> resolve(variant) -> folder``: ``erasekit:<name>[-<variant>]`` resolves to the folder it returns."""


def cache_dir() -> Path:
    """Where built-in models and other derived files are cached."""
    return Path(os.environ.get("ERASEKIT_CACHE", Path.home() / ".cache" / "erasekit"))


def resolve_model(spec: str | Path) -> Path | str:
    """Turn a model spec into something ``from_pretrained`` accepts, building built-in models on first use."""
    spec = str(spec)
    if spec.startswith(BUILTIN_PREFIX):
        name, _, variant = spec[len(BUILTIN_PREFIX) :].partition("-")
        try:
            resolve = MODELS.get(name)
        except ConfigError as exc:
            raise ModelLayoutError(f"{exc} (as erasekit:<name>)") from None
        return resolve(variant or None)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLayoutError(
                f"'{path}' is not a diffusers pipeline folder (no model_index.json); "
                "pass a folder written by save_pretrained, a hub id, or erasekit:tiny"
            )
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id; from_pretrained reports whether it can be reached
    raise ModelLayoutError(f"model '{spec}' not found: no such folder, and it is not a hub id (owner/name)")


def quiet_libraries() -> None:
    """Silence library chatter (deprecations, progress bars) that buries erasekit's own output."""
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")


def load_pipeline(spec: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> DiffusionPipeline:
    """Load a pipeline read-only (the folder on disk is never written) in ``dtype`` on ``device``."""
    check_device(str(device))
    quiet_libraries()
    source = resolve_model(spec)
    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=dtype, safety_checker=None)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLayoutError(f"could not load pipeline '{spec}': {first}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
