"""The Python entry points: ``erase`` a concept set from a model, or run a YAML config end to end."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .concepts import ConceptSet, RunConfig
from .edits import Edit
from .launch import process_device
from .methods import get_method
from .models import ModelAdapter, load_pipeline
from .models.loading import DTYPES


def erase(
    model: Any,
    concepts: Iterable[Any] | ConceptSet,
    method: str = "uce",
    preserve: Sequence[str] = (),
    params: dict[str, Any] | None = None,
    **fit_kwargs: Any,
) -> Edit:
    """Fit ``method`` to erase ``concepts`` from ``model`` and return the Edit (the model is not changed).

    ``model`` is a pipeline, or anything :func:`load_pipeline` accepts (a folder, a hub id, ``erasekit:tiny``).
    ``concepts`` are strings, dicts (text, kind, synonyms, guide, preserve) or :class:`Concept` objects.
    ``fit_kwargs`` are the options the method's ``fit`` declares (e.g. RECE's ``validator``); others are refused.

    >>> edit = erase("erasekit:tiny", [{"text": "dog", "kind": "object"}], method="uce")  # doctest: +SKIP
    >>> edit.apply(pipe)  # doctest: +SKIP
    """
    pipe = load_pipeline(model) if isinstance(model, (str, Path)) else model
    concept_set = concepts if isinstance(concepts, ConceptSet) else ConceptSet.build(concepts, preserve)
    method_class = get_method(method)
    method_class.check_fit_options(fit_kwargs)
    estimator = method_class(params)
    adapter = ModelAdapter(pipe)
    method_class.check_model(adapter)
    return estimator.fit(adapter, concept_set, **fit_kwargs)


def run_config(config: RunConfig) -> Edit:
    """Fit the edit a :class:`RunConfig` describes (seeded for determinism)."""
    estimator = get_method(config.method)(config.params)  # validate params before loading the model
    torch.manual_seed(config.seed)
    pipe = load_pipeline(config.model, dtype=DTYPES[config.dtype], device=process_device(config.device))
    adapter = ModelAdapter(pipe)
    estimator.check_model(adapter)
    edit = estimator.fit(adapter, config.concept_set)
    edit.info.setdefault("model", config.model)
    return edit
