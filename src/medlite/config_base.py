"""The base of every recipe section, wherever its model lives (recipe.py, a method's own module).

Light: pydantic only. A method registered at a seam (compression, distillation, export, data)
declares its config as a `Strict` model in its own module; the recipe validates it after
registration, with the same rules as every built-in section.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

# Annotations that are sections although not a BaseModel subclass (a discriminated union: `distill`).
SECTION_ANNOTATIONS: list[Any] = []


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default.

    A section left empty in YAML (`teacher:` with every key commented out) reads as None:
    it means "all defaults", like an absent section. NaN and infinity are never a valid setting.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, field in cls.model_fields.items():
                if key in data and data[key] is None and is_section(field.annotation):
                    data = {k: v for k, v in data.items() if k != key}
        return data


def is_section(annotation: Any) -> bool:
    return (isinstance(annotation, type) and issubclass(annotation, Strict)) or any(
        annotation is a for a in SECTION_ANNOTATIONS)
