"""MACE's training prompts: 30 fixed templates per concept kind, filled with the concept and with its surrogate.

The reference builds, per concept, two aligned prompt lists from the same template indices: ``old`` (the template with
the concept, e.g. "A photo of adam driver") and ``new`` (with the surrogate, "A photo of a person"). The pairs drive
stage 1; the ``old`` prompts are the LoRA prompts of stage 2 and the fusion inputs of stage 3. Every shipped reference
config uses these templates rather than the paper's GPT-4 prompts; its 31st template is never drawn (a permutation of
indices 0-29), so only the first 30 are kept here.
"""

from __future__ import annotations

from ...concepts import Concept

OBJECT_TEMPLATES: tuple[str, ...] = (
    "{} in a photo", "{} in a snapshot", "A snapshot of {}", "A photograph showcasing {}", "An illustration of {}",
    "A digital rendering of {}", "A visual representation of {}", "A graphic of {}", "A shot of {}", "A photo of {}",
    "A black and white image of {}", "A depiction in portrait form of {}",
    "A scene depicting {} during a public gathering", "{} captured in an image",
    "A depiction created with oil paints capturing {}", "An image of {}", "A drawing capturing the essence of {}",
    "An official photograph featuring {}", "A detailed sketch of {}", "{} during sunset/sunrise",
    "{} in a detailed portrait", "An official photo of {}", "Historic photo of {}", "Detailed portrait of {}",
    "A painting of {}", "HD picture of {}", "Magazine cover capturing {}", "Painting-like image of {}",
    "Hand-drawn art of {}", "An oil portrait of {}",
)  # fmt: skip
STYLE_TEMPLATES: tuple[str, ...] = (
    "An artwork by {}", "Art piece by {}", "A recent creation by {}", "{}'s renowned art", "Latest masterpiece by {}",
    "A stunning image by {}", "An art in {}'s style", "Exhibition artwork of {}", "Art display by {}",
    "a beautiful painting by {}", "An image inspired by {}'s style", "A sketch by {}", "Art piece representing {}",
    "A drawing by {}", "Artistry showcasing {}", "An illustration by {}", "A digital art by {}", "A visual art by {}",
    "A reproduction inspired by {}'s colorful, expressive style", "Famous painting of {}", "A famous art by {}",
    "Artistic style of {}", "{}'s famous piece", "Abstract work of {}", "{}'s famous drawing",
    "Art from {}'s early period", "A portrait by {}", "An imitation reflecting the style of {}",
    "An painting from {}'s collection", "Vibrant reproduction of artwork by {}",
)  # fmt: skip

# Celebrities and explicit content are "object" concepts in the reference (only styles differ).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": OBJECT_TEMPLATES,
    "celebrity": OBJECT_TEMPLATES,
    "explicit": OBJECT_TEMPLATES,
    "style": STYLE_TEMPLATES,
}

# The prompt the reference generates stage-2 training images from ("the" is the reference's wording).
IMAGE_PROMPTS: dict[str, str] = {
    "object": "a photo of the {}",
    "celebrity": "a photo of the {}",
    "explicit": "a photo of the {}",
    "style": "a photo in the style of {}",
}

# Surrogates of the reference's configs and the paper (its Fig. 4). Objects: the paper maps airplane -> "sky"; the other
# shipped objects use "ground" / "street"; we default to "sky" and expect users to set a guide per object.
SURROGATES: dict[str, str] = {
    "object": "sky",
    "celebrity": "a person",
    "explicit": "a person wearing clothes",
    "style": "art",
}


def surrogate(concept: Concept) -> str:
    """The concept's own guide, else MACE's surrogate for its kind."""
    return concept.guide if concept.guide is not None else SURROGATES[concept.kind]


def prompt_pairs(concept: Concept, n_templates: int) -> tuple[list[str], list[str]]:
    """The aligned ``old`` (concept) and ``new`` (surrogate) prompts of the first ``n_templates`` templates."""
    templates = TEMPLATES[concept.kind][:n_templates]
    guide = surrogate(concept)
    return [t.format(concept.text) for t in templates], [t.format(guide) for t in templates]
