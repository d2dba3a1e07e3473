"""GLoCE (CVPR 2025): training-free gated low-rank modules on the cross-attention outputs.

``core`` holds the math (statistics, closed form, gate, calibration, the stacked layer forward), ``modules`` puts
the modules into a pipeline and takes them out (module kind ``gloce``), ``method`` fits them.
"""
