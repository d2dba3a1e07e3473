"""Erasure methods. Each is one file: a config dataclass and ``fit(model, concepts) -> Edit``.

To add a method, write ``methods/<name>.py`` with a :class:`Method` subclass and register it in ``METHODS``.
"""

from __future__ import annotations

import difflib

from ..errors import ConfigError
from .base import Method
from .dumo import DuMo, DuMoConfig
from .esd import ESD, ESDConfig
from .gloce import GLoCE, GLoCEConfig
from .mace import MACE, MACEConfig
from .rece import RECE, RECEConfig
from .uce import UCE, UCEConfig

METHODS: dict[str, type[Method]] = {"uce": UCE, "rece": RECE, "esd": ESD, "dumo": DuMo, "gloce": GLoCE, "mace": MACE}


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (case-insensitive)."""
    key = name.lower()
    if key not in METHODS:
        close = difflib.get_close_matches(key, list(METHODS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint}; available: {', '.join(METHODS)}")
    return METHODS[key]


__all__ = [
    "ESD",
    "MACE",
    "METHODS",
    "RECE",
    "UCE",
    "DuMo",
    "DuMoConfig",
    "ESDConfig",
    "GLoCE",
    "GLoCEConfig",
    "MACEConfig",
    "Method",
    "RECEConfig",
    "UCEConfig",
    "get_method",
]
