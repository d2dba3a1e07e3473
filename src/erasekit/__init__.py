"""erasekit: erase concepts from diffusers text-to-image models, prove it worked, ship the result.

>>> import erasekit
>>> edit = erasekit.erase("erasekit:tiny", ["dog"], method="uce")  # doctest: +SKIP
>>> edit.save("dog.safetensors")  # doctest: +SKIP
>>> erasekit.load_edit(pipe, "dog.safetensors")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .api import erase, run_config
from .concepts import Concept, ConceptSet, RunConfig
from .edits import Edit, load_edit
from .errors import ErasekitError
from .models import ModelAdapter, load_pipeline

__all__ = [
    "Concept",
    "ConceptSet",
    "Edit",
    "ErasekitError",
    "ModelAdapter",
    "RunConfig",
    "__version__",
    "erase",
    "load_edit",
    "load_pipeline",
    "run_config",
]
