"""MACE (CVPR 2024): mass concept erasure by closed-form refinement, per-concept LoRAs and closed-form fusion.

``method`` holds the config, presets and the three-stage fit; ``refine`` (stage 1), ``lora`` (stage 2), ``fusion``
(stage 3), ``masks`` and ``prompts`` the pieces. See docs/methods/mace.md.
"""
