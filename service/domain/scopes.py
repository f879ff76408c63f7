"""The scope catalogue.

``All`` is stored as the literal ``"All"`` and checked at verification time, so a key
with ``All`` also covers scopes added to the catalogue after it was made.
"""

from __future__ import annotations

ALL = "All"

_RESOURCES = {
    "Annotations": "annotations",
    "Concepts": "concepts",
    "Inputs": "inputs",
    "Models": "models",
    "Workflows": "workflows",
}
_VERBS = {
    "Add": "create {}",
    "Get": "read {}",
    "Patch": "change {}",
    "Delete": "delete {}",
}


def _build_catalogue() -> dict[str, str]:
    catalogue = {
        ALL: "every scope, including scopes added to the catalogue later",
        "Predict": "run predictions with models",
        "Search": "search inputs",
    }
    for resource, noun in _RESOURCES.items():
        for verb, sentence in _VERBS.items():
            catalogue[f"{resource}:{verb}"] = sentence.format(noun)
    catalogue["Models:Train"] = "train models"
    return catalogue


CATALOGUE: dict[str, str] = _build_catalogue()

PRESETS: dict[str, list[str]] = {
    "read_only": ["Predict", "Search"],
    "training": ["Models:Add", "Models:Patch", "Models:Train", "Inputs:Add", "Inputs:Get"],
    "all": [ALL],
}


def unknown_scopes(scopes: list[str]) -> list[str]:
    """The scopes of ``scopes`` that are not in the catalogue, in the order given."""
    return [s for s in scopes if s not in CATALOGUE]


def normalise(scopes: list[str]) -> list[str]:
    """Scopes without duplicates, in first-seen order; ``All`` swallows the rest."""
    if ALL in scopes:
        return [ALL]
    return list(dict.fromkeys(scopes))


def grants(held: frozenset[str] | set[str] | list[str], wanted: str) -> bool:
    """Whether a holder of ``held`` may perform ``wanted``."""
    return ALL in held or wanted in held
