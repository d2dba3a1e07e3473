"""Evaluation: prompt sets -> cached sampling -> metrics -> results JSON -> HTML report (``erasekit.report``).

>>> from erasekit.eval import EvalConfig, evaluate
>>> config = EvalConfig(model="erasekit:tiny", prompts=["big_artists"], edits={"uce": "edit.safetensors"})
>>> results = evaluate(config)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# Imported on first use, so that mounting the CLI commands (eval.cli) does not load torch.
_EXPORTS = {
    "EvalConfig": "run",
    "RunSettings": "run",
    "evaluate": "run",
    "CLASSIFIERS": "metrics.base",
    "load_classifier": "metrics.base",
    "METRICS": "metrics",
    "Metric": "metrics",
    "Variant": "metrics",
    "register": "metrics",
    "PROMPT_SETS": "prompts",
    "PromptRow": "prompts",
    "assign_roles": "prompts",
    "load_prompts": "prompts",
    "read_csv": "prompts",
    "Results": "results",
    "compare": "results",
    "load_run": "results",
}

if TYPE_CHECKING:
    from .metrics import METRICS, Metric, Variant, register
    from .metrics.base import CLASSIFIERS, load_classifier
    from .prompts import PROMPT_SETS, PromptRow, assign_roles, load_prompts, read_csv
    from .results import Results, compare, load_run
    from .run import EvalConfig, RunSettings, evaluate

__all__ = [
    "CLASSIFIERS",
    "METRICS",
    "PROMPT_SETS",
    "EvalConfig",
    "Metric",
    "PromptRow",
    "Results",
    "RunSettings",
    "Variant",
    "assign_roles",
    "compare",
    "evaluate",
    "load_classifier",
    "load_prompts",
    "load_run",
    "read_csv",
    "register",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
