"""Sample a pipeline with and without an edit, from the same noise, and lay the images out as a labelled grid.

Each prompt gets its own generator seeded with ``seed``, so an image depends only on (prompt, seed, edit): the "base"
and "erased" rows differ only by the edit, and adding a prompt does not change the other images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .edits import Edit
from .errors import ConfigError

MIN_CELL = 128  # smaller images (tiny test models) are upscaled, pixel for pixel, to at least this size
LABEL_WIDTH = 72  # left column with the row labels ("base", "erased")
HEADER_LINES = 2  # lines of prompt text above each column
FONT_SIZE = 12
LINE_HEIGHT = FONT_SIZE + 2
PAD = 4
HEADER_HEIGHT = HEADER_LINES * LINE_HEIGHT + 2 * PAD


def sample(
    pipe,
    prompts: Sequence[str],
    seed: int = 0,
    steps: int = 30,
    guidance: float = 7.5,
    size: int | None = None,
) -> list[Image.Image]:
    """One image per prompt; ``size`` (pixels, square) defaults to the pipeline's native resolution."""
    if size is not None and (size <= 0 or size % 8):
        raise ConfigError(f"image size must be a positive multiple of 8, got {size}")
    images = []
    for prompt in prompts:
        generator = torch.Generator().manual_seed(seed)
        out = pipe(
            prompt, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size, generator=generator
        )
        images.append(out.images[0])
    return images


def before_after(pipe, edit: Edit, prompts: Sequence[str], **kwargs) -> tuple[list[Image.Image], list[Image.Image]]:
    """(base, erased) images for ``prompts``; the pipeline is left as it was.

    The edit is applied first, so a mismatching base model is reported before any sampling time is spent.
    """
    edit.apply(pipe)
    try:
        erased = sample(pipe, prompts, **kwargs)
    finally:
        edit.remove(pipe)
    return sample(pipe, prompts, **kwargs), erased


def image_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], columns: Sequence[str]) -> Image.Image:
    """Images in a grid with a label per row (left) and per column (top, wrapped to the column width).

    The grid is ``LABEL_WIDTH + n_columns * cell`` wide and ``HEADER_HEIGHT + n_rows * cell`` high, where ``cell``
    is the image size, upscaled by an integer factor to at least ``MIN_CELL``.
    """
    width, height = rows[0][1][0].size
    scale = -(-MIN_CELL // min(width, height))  # ceil, >= 1
    cell_w, cell_h = width * scale, height * scale
    font = ImageFont.load_default(size=FONT_SIZE)
    grid = Image.new("RGB", (LABEL_WIDTH + len(columns) * cell_w, HEADER_HEIGHT + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(columns):
        for k, line in enumerate(_wrap(draw, text, font, cell_w - 2 * PAD)):
            draw.text((LABEL_WIDTH + j * cell_w + PAD, PAD + k * LINE_HEIGHT), line, fill="black", font=font)
    for i, (label, images) in enumerate(rows):
        top = HEADER_HEIGHT + i * cell_h
        draw.text((PAD, top + cell_h // 2), label, fill="black", font=font, anchor="lm")
        for j, image in enumerate(images):
            image = image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
            grid.paste(image, (LABEL_WIDTH + j * cell_w, top))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap into at most ``HEADER_LINES`` lines; what does not fit ends in "..."."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > HEADER_LINES:
        lines = [*lines[: HEADER_LINES - 1], " ".join(lines[HEADER_LINES - 1 :])]
    return [_fit(draw, line, font, width) for line in lines]


def _fit(draw: ImageDraw.ImageDraw, line: str, font, width: int) -> str:
    if draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "...", font=font) > width:
        line = line[:-1]
    return line + "..."
