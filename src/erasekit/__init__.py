"""erasekit: erase concepts from diffusers text-to-image models, prove it worked, ship the result.

>>> import erasekit
>>> edit = erasekit.erase("erasekit:tiny", ["dog"], method="uce")  # doctest: +SKIP
>>> edit.save("dog.safetensors")  # doctest: +SKIP
>>> erasekit.load_edit(pipe, "dog.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Public names are imported on first use, so that `import erasekit` (and `erasekit --help`) does not load torch.
_EXPORTS = {
    "erase": "api",
    "run_config": "api",
    "Concept": "concepts",
    "ConceptSet": "concepts",
    "RunConfig": "concepts",
    "Edit": "edits",
    "EvalConfig": "eval.run",
    "evaluate": "eval.run",
    "load_edit": "edits",
    "ErasekitError": "errors",
    "ModelAdapter": "models",
    "load_pipeline": "models",
}

if TYPE_CHECKING:
    from .api import erase, run_config
    from .concepts import Concept, ConceptSet, RunConfig
    from .edits import Edit, load_edit
    from .errors import ErasekitError
    from .eval.run import EvalConfig, evaluate
    from .models import ModelAdapter, load_pipeline

__all__ = [
    "Concept",
    "ConceptSet",
    "Edit",
    "ErasekitError",
    "EvalConfig",
    "ModelAdapter",
    "RunConfig",
    "__version__",
    "erase",
    "evaluate",
    "load_edit",
    "load_pipeline",
    "run_config",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
