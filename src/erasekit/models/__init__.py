"""Model adapters: loading pipelines, finding cross-attention layers, encoding prompts."""

from .adapter import CrossAttentionLayer, ModelAdapter, TokenPositions, tensors_fingerprint
from .loading import load_pipeline, resolve_model

__all__ = [
    "CrossAttentionLayer",
    "ModelAdapter",
    "TokenPositions",
    "load_pipeline",
    "resolve_model",
    "tensors_fingerprint",
]
