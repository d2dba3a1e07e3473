"""Metric plug-ins, by name. To add one, subclass :class:`Metric`, decorate it with :func:`register` and import its
module here."""

from . import accuracy, clip, distribution, lpips, nudenet
from .accuracy import h_a, h_c, h_cc, h_o, harmonic_mean
from .base import METRICS, Metric, Variant, register
from .distribution import fid_from_features, frechet_distance, kid_from_features
from .nudenet import EXPOSED_CLASSES, count_exposed

__all__ = [
    "EXPOSED_CLASSES",
    "METRICS",
    "Metric",
    "Variant",
    "accuracy",
    "clip",
    "count_exposed",
    "distribution",
    "fid_from_features",
    "frechet_distance",
    "h_a",
    "h_c",
    "h_cc",
    "h_o",
    "harmonic_mean",
    "kid_from_features",
    "lpips",
    "nudenet",
    "register",
]
