"""Erasure methods, one file (or folder) each, found by name through :data:`METHODS`.

Importing this package imports no method: the registry imports the method files on the first lookup, so loading an
edit that adds GLoCE modules imports GLoCE's modules and nothing else. To add a method, write ``methods/<name>.py``
with a config dataclass and a :class:`Method` subclass decorated with :func:`register_method`
(``docs/adding_a_method.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .base import METHODS, Method, get_method, register_method, register_preset

_EXPORTS = {
    "UCE": "uce",
    "UCEConfig": "uce",
    "RECE": "rece",
    "RECEConfig": "rece",
    "ESD": "esd",
    "ESDConfig": "esd",
    "DuMo": "dumo.method",
    "DuMoConfig": "dumo.method",
    "GLoCE": "gloce.method",
    "GLoCEConfig": "gloce.config",
    "MACE": "mace.method",
    "MACEConfig": "mace.method",
}

if TYPE_CHECKING:
    from .dumo.method import DuMo, DuMoConfig
    from .esd import ESD, ESDConfig
    from .gloce.config import GLoCEConfig
    from .gloce.method import GLoCE
    from .mace.method import MACE, MACEConfig
    from .rece import RECE, RECEConfig
    from .uce import UCE, UCEConfig

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
    "register_method",
    "register_preset",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
