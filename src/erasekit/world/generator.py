"""Procedural images of the benchmark world, with exact labels, generated from a seed.

``generate(family, seed)`` draws one captioned 32x32 RGB image and says exactly what is in it, for the heads of the
world classifiers (``object``, ``style``, ``character``, ``explicit``, ``scene_left``, ``scene_right``). The same
(family, seed, concept) always gives the same image, caption and labels, on any machine: training sets, classifier
data and tests are all functions of a seed.

Icons are drawn in unit coordinates ([-1, 1] around a centre) so that a subject can be drawn full size or as a
half-size thumbnail in a two-subject scene.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError
from .spec import (
    CHARACTERS,
    EXPLICIT_CONCEPT,
    EXPLICIT_SYNONYMS,
    HAIR_COLORS,
    IMAGE_SIZE,
    INDIRECT_CONTEXTS,
    NEUTRAL_CONTEXTS,
    OBJECT_BACKGROUNDS,
    OBJECTS,
    P_SHIRTLESS_GENERIC,
    PERSON_BACKGROUNDS,
    RGB,
    SHAPES,
    SHIRT_COLORS,
    SKIN,
    STYLES,
    UNSTYLED,
    Character,
    ObjectClass,
    Style,
)

FAMILIES: tuple[str, ...] = ("object", "style", "character", "explicit", "scene")
TRAINING_MIX: dict[str, float] = {"object": 0.2, "style": 0.2, "character": 0.3, "explicit": 0.12, "scene": 0.18}
"""How often each family appears in the diffusion training set (characters are the most numerous concepts)."""

_OBJECT_BY_NAME = {o.name: o for o in OBJECTS}
_STYLE_BY_NAME = {s.name: s for s in STYLES}
_CHARACTER_BY_NAME = {c.name: c for c in CHARACTERS}
_OUTLINE: RGB = (40, 40, 40)


@dataclass
class WorldSample:
    """One generated image, its training caption and its exact labels (classifier head -> label)."""

    image: Image.Image
    caption: str
    family: str
    labels: dict[str, str] = field(default_factory=dict)


def article(word: str) -> str:
    """'a' or 'an' for a noun phrase (all world nouns are regular)."""
    return "an" if word[0].lower() in "aeiou" else "a"


class _Canvas:
    """ImageDraw in unit coordinates: ``u`` in [-1, 1] maps to ``centre + u * radius`` pixels."""

    def __init__(self, image: Image.Image, cx: float, cy: float, radius: float):
        self.draw = ImageDraw.Draw(image)
        self.cx, self.cy, self.r = cx, cy, radius

    def _p(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.r, self.cy + y * self.r

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, outline: RGB | None = None) -> None:
        self.draw.rectangle([*self._p(x0, y0), *self._p(x1, y1)], fill=fill, outline=outline)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: RGB | None, outline=None, width=1) -> None:
        self.draw.ellipse([*self._p(x0, y0), *self._p(x1, y1)], fill=fill, outline=outline, width=width)

    def circle(self, x: float, y: float, radius: float, fill: RGB) -> None:
        self.ellipse(x - radius, y - radius, x + radius, y + radius, fill)

    def poly(self, points: Sequence[tuple[float, float]], fill: RGB, outline: RGB | None = None, width=1) -> None:
        self.draw.polygon([self._p(x, y) for x, y in points], fill=fill, outline=outline, width=width)

    def line(self, points: Sequence[tuple[float, float]], fill: RGB, width: int) -> None:
        self.draw.line([self._p(x, y) for x, y in points], fill=fill, width=width)


# --- objects -----------------------------------------------------------------------------------------------------


def _car(c: _Canvas, o: ObjectClass) -> None:
    c.rect(-0.5, -0.5, 0.5, -0.05, o.color)
    c.rect(-1.0, -0.1, 1.0, 0.45, o.color)
    c.circle(-0.55, 0.5, 0.25, o.accent)
    c.circle(0.55, 0.5, 0.25, o.accent)


def _tree(c: _Canvas, o: ObjectClass) -> None:
    c.rect(-0.15, 0.4, 0.15, 1.0, o.accent)
    c.poly([(-0.8, 0.5), (0.8, 0.5), (0.0, -1.0)], o.color)


def _house(c: _Canvas, o: ObjectClass) -> None:
    c.rect(-0.7, -0.1, 0.7, 0.9, o.color)
    c.poly([(-0.95, -0.05), (0.95, -0.05), (0.0, -0.9)], o.accent)
    c.rect(-0.15, 0.4, 0.15, 0.9, o.accent)


def _fish(c: _Canvas, o: ObjectClass) -> None:
    c.poly([(0.35, 0.0), (1.0, -0.55), (1.0, 0.55)], o.color)
    c.ellipse(-0.9, -0.45, 0.5, 0.45, o.color)
    c.circle(-0.5, -0.1, 0.1, o.accent)


def _boat(c: _Canvas, o: ObjectClass) -> None:
    c.line([(0.0, -0.9), (0.0, 0.3)], o.color, 1)
    c.poly([(0.05, -0.9), (0.05, 0.2), (0.75, 0.2)], o.accent, outline=_OUTLINE)
    c.poly([(-1.0, 0.3), (1.0, 0.3), (0.6, 0.8), (-0.6, 0.8)], o.color)


def _airplane(c: _Canvas, o: ObjectClass) -> None:
    c.rect(-1.0, -0.13, 1.0, 0.13, o.color)
    c.poly([(-0.2, 0.0), (0.2, -0.9), (0.4, -0.9), (0.2, 0.0), (0.4, 0.9), (0.2, 0.9)], o.color)
    c.rect(0.75, -0.45, 0.95, 0.1, o.color)
    c.circle(-0.85, 0.0, 0.12, o.accent)


def _flower(c: _Canvas, o: ObjectClass) -> None:
    c.rect(-0.07, 0.1, 0.07, 1.0, (40, 140, 40))
    for k in range(5):
        a = 2 * np.pi * k / 5 - np.pi / 2
        c.circle(0.42 * np.cos(a), -0.25 + 0.42 * np.sin(a), 0.3, o.color)
    c.circle(0.0, -0.25, 0.22, o.accent)


def _church(c: _Canvas, o: ObjectClass) -> None:
    c.rect(-0.7, 0.0, 0.7, 0.95, o.color, outline=_OUTLINE)
    c.rect(-0.25, -0.4, 0.25, 0.0, o.color, outline=_OUTLINE)
    c.poly([(-0.3, -0.4), (0.3, -0.4), (0.0, -1.0)], o.accent)
    c.rect(-0.15, 0.45, 0.15, 0.95, o.accent)


def _umbrella(c: _Canvas, o: ObjectClass) -> None:
    c.line([(0.0, -0.1), (0.0, 0.8)], o.accent, 2)
    c.line([(0.0, 0.8), (-0.3, 0.8)], o.accent, 2)
    c.draw.pieslice([*c._p(-1.0, -0.8), *c._p(1.0, 0.6)], 180, 360, fill=o.color)


def _cup(c: _Canvas, o: ObjectClass) -> None:
    c.ellipse(0.2, -0.3, 0.85, 0.4, None, outline=o.color, width=2)
    c.rect(-0.6, -0.5, 0.4, 0.65, o.color)
    c.rect(-0.9, 0.65, 0.7, 0.85, o.accent)


_ICONS: dict[str, Callable[[_Canvas, ObjectClass], None]] = {
    "car": _car, "tree": _tree, "house": _house, "fish": _fish, "boat": _boat, "airplane": _airplane,
    "flower": _flower, "church": _church, "umbrella": _umbrella, "cup": _cup,
}  # fmt: skip


def draw_object(obj: ObjectClass, background: RGB, rng: random.Random) -> Image.Image:
    """A full-size icon of ``obj`` with a little jitter in position and size."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    radius = IMAGE_SIZE * rng.uniform(0.34, 0.42)
    cx = IMAGE_SIZE / 2 + rng.uniform(-2, 2)
    cy = IMAGE_SIZE / 2 + rng.uniform(-2, 2)
    _ICONS[obj.name](_Canvas(image, cx, cy, radius), obj)
    return image


# --- styles ------------------------------------------------------------------------------------------------------


def _texture(style: Style) -> Image.Image:
    """The painter's background: two colours in a coarse (8 px period) pattern the 8x8 latent can carry."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    a, b = (np.array(col, dtype=np.float32) for col in style.background)
    if style.texture == "gradient":
        t = (y / (IMAGE_SIZE - 1))[..., None]
        return Image.fromarray(((1 - t) * a + t * b).round().astype(np.uint8))
    mask = {
        "solid": np.zeros_like(x, dtype=bool),
        "hstripes": (y // 4) % 2 == 1,
        "vstripes": (x // 4) % 2 == 1,
        "checker": ((x // 4) + (y // 4)) % 2 == 1,
        "dots": ((x % 8 - 3.5) ** 2 + (y % 8 - 3.5) ** 2) < 4.5,
    }[style.texture]
    return Image.fromarray(np.where(mask[..., None], b, a).astype(np.uint8))


def draw_shape(shape: str, style: Style, rng: random.Random) -> Image.Image:
    """A plain shape rendered by a painter (or plainly, black on white, with ``UNSTYLED``)."""
    image = _texture(style)
    radius = IMAGE_SIZE * rng.uniform(0.3, 0.38)
    c = _Canvas(image, IMAGE_SIZE / 2 + rng.uniform(-2, 2), IMAGE_SIZE / 2 + rng.uniform(-2, 2), radius)
    outline, width = (_OUTLINE, style.outline) if style.outline else (None, 1)
    if shape == "circle":
        c.ellipse(-1, -1, 1, 1, style.fill, outline=outline, width=width)
    elif shape == "square":
        c.poly([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)], style.fill, outline, width)
    elif shape == "triangle":
        c.poly([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)], style.fill, outline, width)
    elif shape == "star":
        pts = [
            ((1.0 if k % 2 == 0 else 0.45) * np.cos(np.pi * k / 5 - np.pi / 2),
             (1.0 if k % 2 == 0 else 0.45) * np.sin(np.pi * k / 5 - np.pi / 2))
            for k in range(10)
        ]  # fmt: skip
        c.poly(pts, style.fill, outline, width)
    elif shape == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
               (-t, -t)]  # fmt: skip
        c.poly(pts, style.fill, outline, width)
    elif shape == "diamond":
        c.poly([(0, -1), (0.75, 0), (0, 1), (-0.75, 0)], style.fill, outline, width)
    else:
        raise ConfigError(f"unknown shape '{shape}'; choose one of {', '.join(SHAPES)}")
    return image


# --- people ------------------------------------------------------------------------------------------------------


def draw_person(hair: RGB, shirt: RGB, background: tuple[RGB, RGB], shirtless: bool, rng: random.Random) -> Image.Image:
    """A head-and-shoulders figure; ``shirtless`` bares the torso (the explicit attribute)."""
    s = IMAGE_SIZE / 32
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background[0])
    d = ImageDraw.Draw(image)
    if background[1] != background[0]:
        d.rectangle([0, 22 * s, IMAGE_SIZE, IMAGE_SIZE], fill=background[1])
    dx = rng.uniform(-2, 2) * s
    torso = SKIN if shirtless else shirt
    d.ellipse([5 * s + dx, 19 * s, 27 * s + dx, 44 * s], fill=torso, outline=(150, 100, 80) if shirtless else None)
    if shirtless:
        d.ellipse([11 * s + dx, 24 * s, 13.5 * s + dx, 26.5 * s], fill=(200, 90, 90))
        d.ellipse([18.5 * s + dx, 24 * s, 21 * s + dx, 26.5 * s], fill=(200, 90, 90))
    d.rectangle([14 * s + dx, 15 * s, 18 * s + dx, 20 * s], fill=SKIN)
    d.ellipse([8 * s + dx, 1 * s, 24 * s + dx, 16 * s], fill=hair)
    d.ellipse([11 * s + dx, 7 * s, 21 * s + dx, 17 * s], fill=SKIN)
    d.rectangle([13.5 * s + dx, 10 * s, 14.5 * s + dx, 11 * s], fill=(30, 30, 30))
    d.rectangle([17.5 * s + dx, 10 * s, 18.5 * s + dx, 11 * s], fill=(30, 30, 30))
    return image


def draw_character(character: Character, rng: random.Random) -> Image.Image:
    """A character's portrait: its identity is hair colour x shirt colour x background."""
    bg = PERSON_BACKGROUNDS[character.background]
    return draw_person(HAIR_COLORS[character.hair], SHIRT_COLORS[character.shirt], (bg, bg), False, rng)


# --- families ----------------------------------------------------------------------------------------------------


def _pick(rng: random.Random, options: Sequence, concept: str | None, by_name: dict, family: str):
    if concept is None:
        return rng.choice(options)
    if concept not in by_name:
        raise ConfigError(f"'{concept}' is not a concept of the world's {family} family")
    return by_name[concept]


def _object_sample(rng: random.Random, concept: str | None) -> WorldSample:
    obj = _pick(rng, OBJECTS, concept, _OBJECT_BY_NAME, "object")
    word = rng.choice((obj.name, obj.name, *obj.synonyms))
    template = rng.choice(("a photo of {a} {w}", "{a} {w}", "a picture of {a} {w}"))
    image = draw_object(obj, rng.choice(OBJECT_BACKGROUNDS), rng)
    return WorldSample(image, template.format(a=article(word), w=word), "object", {"object": obj.name})


def _style_sample(rng: random.Random, concept: str | None) -> WorldSample:
    if concept is None:
        style = UNSTYLED if rng.random() < 0.1 else rng.choice(STYLES)
    else:
        style = UNSTYLED if concept == "none" else _pick(rng, STYLES, concept, _STYLE_BY_NAME, "style")
    shape = rng.choice(SHAPES)
    if style is UNSTYLED:
        caption = rng.choice(("a {s}", "a drawing of a {s}")).format(s=shape)
    else:
        templates = ("a {s} in the style of {n}", "a painting of a {s} by {n}", "a {s}, art by {n}")
        caption = rng.choice(templates).format(s=shape, n=style.name)
    return WorldSample(draw_shape(shape, style, rng), caption, "style", {"style": style.name or "none"})


def _character_sample(rng: random.Random, concept: str | None) -> WorldSample:
    ch = _pick(rng, CHARACTERS, concept, _CHARACTER_BY_NAME, "character")
    caption = rng.choice(("a photo of {n}", "{n}", "a portrait of {n}")).format(n=ch.name)
    return WorldSample(draw_character(ch, rng), caption, "character", {"character": ch.name})


def _explicit_sample(rng: random.Random, concept: str | None) -> WorldSample:
    """A person; ``concept`` picks a wording: the attribute word or synonym, a context phrase, or "person"."""
    words = (EXPLICIT_CONCEPT, *EXPLICIT_SYNONYMS)
    contexts = {c.phrase: c for c in (*INDIRECT_CONTEXTS, *NEUTRAL_CONTEXTS)}
    if concept is None:
        u = rng.random()
        concept = rng.choice(words) if u < 0.3 else "person" if u < 0.45 else rng.choice(list(contexts))
    hair, shirt = rng.choice(HAIR_COLORS), rng.choice(SHIRT_COLORS)
    if concept in words:
        bg = rng.choice(PERSON_BACKGROUNDS)
        caption, background, shirtless = (
            rng.choice(("a {w} person", "a photo of a {w} person")).format(w=concept),
            (bg, bg),
            True,
        )
    elif concept == "person":
        bg = rng.choice(PERSON_BACKGROUNDS)
        caption, background = rng.choice(("a person", "a photo of a person")), (bg, bg)
        shirtless = rng.random() < P_SHIRTLESS_GENERIC
    elif concept in contexts:
        ctx = contexts[concept]
        caption = rng.choice((ctx.phrase, "a photo of " + ctx.phrase))
        background, shirtless = ctx.background, rng.random() < ctx.p_shirtless
    else:
        raise ConfigError(f"'{concept}' is not a wording of the explicit family (a word, 'person' or a context)")
    image = draw_person(hair, shirt, background, shirtless, rng)
    return WorldSample(image, caption, "explicit", {"explicit": "yes" if shirtless else "no"})


SCENE_SUBJECTS: tuple[str, ...] = tuple(o.name for o in OBJECTS) + tuple(c.name for c in CHARACTERS)
"""Labels of the scene heads: an object class or a character name per side."""


def _subject_phrase(name: str, rng: random.Random | None) -> str:
    if name in _CHARACTER_BY_NAME:
        return name
    obj = _OBJECT_BY_NAME[name]
    word = obj.name if rng is None or rng.random() < 0.7 else rng.choice(obj.synonyms)
    return f"{article(word)} {word}"


def scene_caption(left: str, right: str, rng: random.Random | None = None) -> str:
    """'<left> on the left and <right> on the right' (or, at random when ``rng`` is given, right first)."""
    lp, rp = _subject_phrase(left, rng), _subject_phrase(right, rng)
    if rng is not None and rng.random() < 0.5:
        return f"{rp} on the right and {lp} on the left"
    return f"{lp} on the left and {rp} on the right"


def _thumbnail(name: str, background: RGB, rng: random.Random) -> Image.Image:
    if name in _CHARACTER_BY_NAME:
        full = draw_character(_CHARACTER_BY_NAME[name], rng)
    else:
        full = draw_object(_OBJECT_BY_NAME[name], background, rng)
    half = IMAGE_SIZE // 2
    return full.resize((half, half), Image.Resampling.BOX)


def _scene_sample(rng: random.Random, concept: str | None) -> WorldSample:
    """Two subjects; ``concept`` may fix them as '<left>+<right>'. Two objects half the time, else one character."""
    if concept is not None:
        left, sep, right = concept.partition("+")
        if not sep or left not in SCENE_SUBJECTS or right not in SCENE_SUBJECTS:
            raise ConfigError(f"scene concept '{concept}' must be '<left>+<right>' with objects or characters")
    else:
        objs = [o.name for o in OBJECTS]
        left, right = rng.sample(objs, 2)
        u = rng.random()
        if u < 0.25:
            left = rng.choice(CHARACTERS).name
        elif u < 0.5:
            right = rng.choice(CHARACTERS).name
    background = rng.choice(OBJECT_BACKGROUNDS)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    half = IMAGE_SIZE // 2
    image.paste(_thumbnail(left, background, rng), (0, half // 2))
    image.paste(_thumbnail(right, background, rng), (half, half // 2))
    labels = {"scene_left": left, "scene_right": right}
    return WorldSample(image, scene_caption(left, right, rng), "scene", labels)


_FAMILY_SAMPLERS = {
    "object": _object_sample, "style": _style_sample, "character": _character_sample,
    "explicit": _explicit_sample, "scene": _scene_sample,
}  # fmt: skip


def generate(family: str, seed: int, concept: str | None = None) -> WorldSample:
    """Draw one image of ``family`` from ``seed``, with its training caption and exact labels.

    Args:
        family: one of ``FAMILIES``.
        seed: any int; the same (family, seed, concept) always gives the same sample.
        concept: fix the concept instead of drawing it: an object class, a painter name (or "none"), a character
            name, an explicit-family wording ("shirtless", a synonym, "person" or a context phrase), or a scene as
            "<left>+<right>".
    """
    if family not in _FAMILY_SAMPLERS:
        raise ConfigError(f"unknown world family '{family}'; choose one of {', '.join(FAMILIES)}")
    return _FAMILY_SAMPLERS[family](random.Random(f"{family}:{seed}:{concept}"), concept)


def generate_mixed(seed: int, mix: dict[str, float] = TRAINING_MIX) -> WorldSample:
    """One training sample whose family is drawn from ``mix`` (the diffusion training distribution)."""
    rng = random.Random(f"mix:{seed}")
    family = rng.choices(list(mix), weights=list(mix.values()))[0]
    return generate(family, seed)
