"""``erasekit attack CONFIG.yaml``: which model, edits, prompts, attacks (with their budgets) and judge.

```yaml
model: erasekit:world
edits: {uce: uce.safetensors, rece: rece.safetensors}   # the unedited "base" is attacked too (sanity)
prompts: [world:objects]            # the attacked rows: those whose concept an edit erased, with a role in `roles`
roles: [erase]                      # erase (prompts naming the concept), synonym, indirect (I2P-style)
attacks:                            # label -> options; `type` defaults to the label
  closed_form: {lambda_reg: 0.1}
  closed_form_small: {type: closed_form, lambda_reg: 0.001}
  ringabell: {eta: 3.0}
  inversion: {steps: 100}
  token_search: {steps: 20, queries: 4}
judge: world                        # world | module:factory (a classifier) | nudenet
judge_options: {}                   # nudenet: the nudenet metric's options (threshold, classes, ...)
seed: 0
output: runs/attack
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..eval.api import check_run_settings
from ..validation import from_yaml
from . import closed_form, inversion, ringabell, token_search  # noqa: F401 (importing registers the attacks)
from .base import ATTACKS, Attack, build_attack

ATTACKABLE_ROLES = ("erase", "synonym", "indirect")
DEFAULT_ATTACKS: dict[str, dict[str, Any]] = {"closed_form": {}, "ringabell": {}, "inversion": {}, "token_search": {}}
__all__ = ["ATTACKABLE_ROLES", "ATTACKS", "DEFAULT_ATTACKS", "AttackConfig", "build_attack"]
NO_ATTACK = "no_attack"


@dataclass
class AttackConfig:
    """A red-teaming run as written in YAML; every field and every attack's options are validated up front."""

    model: str
    prompts: list[str]
    attacks: dict[str, dict | None] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_ATTACKS.items()})
    edits: dict[str, str] = field(default_factory=dict)
    concepts: list[str] | None = None
    roles: list[str] = field(default_factory=lambda: ["erase"])
    judge: str = "world"
    judge_options: dict[str, Any] = field(default_factory=dict)
    baseline: bool = True
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    size: int | None = None
    limit: int | None = None
    batch_size: int = 8
    output: str = "runs/attack"
    cache_dir: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        check_run_settings(self, "attack")
        if not self.attacks:
            raise ConfigError(f"attacks: name at least one attack ({', '.join(DEFAULT_ATTACKS)})")
        if NO_ATTACK in self.attacks:
            raise ConfigError(f"attacks: '{NO_ATTACK}' is reserved for the plain prompts; name the attack otherwise")
        for role in self.roles:
            if role not in ATTACKABLE_ROLES:
                raise ConfigError(f"roles: '{role}' cannot be attacked; choose from {', '.join(ATTACKABLE_ROLES)}")
        self.build_attacks()

    def build_attacks(self) -> list[Attack]:
        """The configured attacks, in order (options validated here)."""
        return [build_attack(label, options) for label, options in self.attacks.items()]

    @classmethod
    def from_yaml(cls, path: str | Path) -> AttackConfig:
        return from_yaml(cls, path)
