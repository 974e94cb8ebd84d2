"""Prompt template sets by name (METHOD.md 2): the CoOp / Tip-Adapter per-dataset prompts."""

from __future__ import annotations

__all__ = ["TEMPLATES", "get_templates", "templates_for"]

IMAGENET7 = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "default": ("a photo of a {}.",),
    "imagenet7": IMAGENET7,
    "imagenet": IMAGENET7,
    "caltech101": ("a photo of a {}.",),
    "dtd": ("{} texture.",),
    "eurosat": ("a centered satellite photo of {}.",),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.",),
    "food101": ("a photo of {}, a type of food.",),
    "oxford_flowers": ("a photo of a {}, a type of flower.",),
    "oxford_pets": ("a photo of a {}, a type of pet.",),
    "stanford_cars": ("a photo of a {}.",),
    "sun397": ("a photo of a {}.",),
    "ucf101": ("a photo of a person doing {}.",),
}


def templates_for(name: str, dataset: str | None = None) -> str:
    """The set a teacher uses: ``name``, or for "auto" the set of the benchmark ``dataset``
    (every benchmark name is a set name), else "default"."""
    if name != "auto":
        return name
    return dataset if dataset in TEMPLATES else "default"


def get_templates(name: str) -> tuple[str, ...]:
    """Templates by set name; a string containing '{}' is taken as a single literal template."""
    name = templates_for(name)
    if name in TEMPLATES:
        return TEMPLATES[name]
    if "{}" in name:
        return tuple(t.strip() for t in name.split("|") if t.strip())
    known = ", ".join(sorted(TEMPLATES))
    raise ValueError(f"unknown template set {name!r}; known: {known} (or a literal like 'a photo of a {{}}.')")
