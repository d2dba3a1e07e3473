"""Shared fixtures: one tiny offline pipeline saved per test session, loaded fresh where a test mutates it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from erasekit.models import ModelAdapter, load_pipeline
from erasekit.models.tiny import tiny_pipeline

torch.set_num_threads(1)  # tiny models: thread start-up costs more than it saves, and CI has 2 cores
# Tests never read or write the user's cache of text encodings (models/cache.py), also in session fixtures and in the
# processes they start; tests/test_encoding_cache.py switches it on, in a temporary folder.
os.environ["ERASEKIT_TEXT_CACHE"] = "0"


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1.x-layout pipeline folder (seed 0), built once per session."""
    return tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def other_tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny pipeline with other weights (seed 1): "another base model"."""
    return tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-1", seed=1)


@pytest.fixture
def tiny_pipe(tiny_path: Path):
    """A freshly loaded tiny pipeline that a test may modify."""
    return load_pipeline(tiny_path)


@pytest.fixture
def tiny_model(tiny_pipe) -> ModelAdapter:
    return ModelAdapter(tiny_pipe)
