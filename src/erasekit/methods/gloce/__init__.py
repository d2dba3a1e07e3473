"""GLoCE (CVPR 2025): training-free gated low-rank modules on the cross-attention outputs.

``core`` holds the math, ``modules`` puts the modules into a pipeline and takes them out (module kind ``gloce``: all
an edit needs); ``method`` fits them with ``config`` (knobs, presets), ``roles`` (prompts) and ``statistics``."""
