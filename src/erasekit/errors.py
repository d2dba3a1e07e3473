"""One exception family for everything a user can get wrong.

Every error a user can cause derives from :class:`ErasekitError`; the CLI prints its message on one line and exits
with code 2. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class ErasekitError(Exception):
    """Base class of every error caused by bad input (config, model, artifact, paths)."""


class ConfigError(ErasekitError):
    """A run config, concept list or hyper-parameter is invalid."""


class ModelLayoutError(ErasekitError):
    """The model is missing, or is not a pipeline layout erasekit knows how to edit."""


class TokenizationError(ErasekitError):
    """A text cannot be encoded by the model's tokenizer (empty, too long or unknown tokens)."""


class NumericalError(ErasekitError):
    """Weights or a computed edit contain NaN or infinite values."""


class ArtifactError(ErasekitError):
    """An edit artifact is missing, corrupted, truncated or of an unknown format."""


class BaseModelMismatchError(ArtifactError):
    """An edit artifact was fitted on other base weights than the pipeline it is applied to."""


class OutputExistsError(ErasekitError):
    """An output path exists and overwriting was not asked for."""


class OutputPathError(ErasekitError):
    """An output path cannot be written (read-only, a file where a folder goes, a parent that is a file)."""


class EvaluationError(ErasekitError):
    """An evaluation cannot complete (images missing from another process, a run folder without results)."""


class MetricUnavailableError(EvaluationError):
    """A metric cannot run here: its model weights, classifier or optional package are missing."""
