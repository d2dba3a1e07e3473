"""Red-teaming: attacks that try to bring an erased concept back, and their success rates per concept.

>>> from erasekit.attacks import AttackConfig, run_attacks
>>> config = AttackConfig(model="erasekit:world", prompts=["world:objects"], edits={"uce": "car.safetensors"})
>>> results = run_attacks(config)  # doctest: +SKIP

Attacks (one file each, registered in :data:`ATTACKS`): ``closed_form`` (RECE's adversarial embedding),
``inversion`` (concept inversion: a soft-prompt word fitted on the edited model), ``ringabell`` (RECE's Ring-A-Bell
concept vector) and ``token_search`` (an UnlearnDiffAtk-style discrete prefix search). See ``docs/attacks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# Imported on first use, so that mounting the CLI command (attacks.cli) does not load torch.
_EXPORTS = {
    "ATTACKS": "config",
    "Adversarial": "base",
    "Attack": "base",
    "Budget": "base",
    "Target": "base",
    "build_attack": "config",
    "register": "base",
    "AttackConfig": "config",
    "ClassifierJudge": "judge",
    "Judge": "judge",
    "NudeNetJudge": "judge",
    "build_judge": "judge",
    "run_attacks": "runner",
}

if TYPE_CHECKING:
    from .base import Adversarial, Attack, Budget, Target, register
    from .config import ATTACKS, AttackConfig, build_attack
    from .judge import ClassifierJudge, Judge, NudeNetJudge, build_judge
    from .runner import run_attacks

__all__ = [
    "ATTACKS",
    "Adversarial",
    "Attack",
    "AttackConfig",
    "Budget",
    "ClassifierJudge",
    "Judge",
    "NudeNetJudge",
    "Target",
    "build_attack",
    "build_judge",
    "register",
    "run_attacks",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
