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
sampling_steps: 50                  # and every other run setting of `erasekit eval` (guidance, size, limit, ...)
output: runs/attack
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from ..eval.run import RunSettings
from ..validation import Seed
from . import closed_form, inversion, ringabell, token_search  # noqa: F401 (importing registers the attacks)
from .base import ATTACKS, Attack, build_attack

ATTACKABLE_ROLES = ("erase", "synonym", "indirect")
DEFAULT_ATTACKS: dict[str, dict[str, Any]] = {"closed_form": {}, "ringabell": {}, "inversion": {}, "token_search": {}}
__all__ = ["ATTACKABLE_ROLES", "ATTACKS", "DEFAULT_ATTACKS", "AttackConfig", "build_attack"]
NO_ATTACK = "no_attack"


@dataclass
class AttackConfig(RunSettings):
    """A red-teaming run as written in YAML: a run (model, edits, prompts, sampling), its attacks and their judge.

    Every field and every attack's options are validated up front.
    """

    output: str = "runs/attack"
    attacks: dict[str, dict | None] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_ATTACKS.items()})
    roles: list[str] = field(default_factory=lambda: ["erase"])
    judge: str = "world"
    judge_options: dict[str, Any] = field(default_factory=dict)
    seed: Seed = 0

    verb: ClassVar[str] = "attack"

    def __post_init__(self) -> None:
        super().__post_init__()
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
