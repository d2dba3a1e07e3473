"""GLoCE (CVPR 2025): training-free gated low-rank modules on the cross-attention outputs.

``core`` holds the math (statistics, closed form, gate, calibration, the stacked layer forward), ``modules`` puts
the modules into a pipeline and takes them out (module kind ``gloce``), ``method`` fits them.
"""

from __future__ import annotations

from .method import PRESETS, GLoCE, GLoCEConfig, merge_edits

__all__ = ["PRESETS", "GLoCE", "GLoCEConfig", "merge_edits"]
