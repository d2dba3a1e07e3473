"""Model adapters: loading pipelines, finding cross-attention layers, encoding prompts."""

from .adapter import CrossAttentionLayer, ModelAdapter, TokenPositions, denoiser_of, tensors_fingerprint
from .loading import load_pipeline, resolve_model

__all__ = [
    "CrossAttentionLayer",
    "ModelAdapter",
    "TokenPositions",
    "denoiser_of",
    "load_pipeline",
    "resolve_model",
    "tensors_fingerprint",
]
