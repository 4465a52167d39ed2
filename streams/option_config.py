"""Service settings read from worker options: one parse for every family's lifecycle config.

A worker passes ``--option SERVICE.KEY=VALUE`` values as strings; a Python caller passes numbers.
A config is a frozen dataclass of ``int`` and ``float`` fields that checks its own ranges in
``__post_init__``; this mixin only takes its keys out of the options and turns strings into the
field's type, with an error that names the key.
"""

from __future__ import annotations

from dataclasses import Field, fields
from typing import Any, Self


class OptionConfig:
    """Mixin for a frozen dataclass of settings that :meth:`pop_from` reads from worker options."""

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> Self:
        """Take this config's keys out of ``options`` (the rest are the service's own)."""
        found = {
            spec.name: _typed(spec, options.pop(spec.name))
            for spec in fields(cls)  # type: ignore[arg-type]
            if spec.name in options
        }
        return cls(**found)


def _typed(spec: Field[Any], value: Any) -> Any:
    """A string as the field's number type; any other value is left for the config's own check."""
    if not isinstance(value, str):
        return value
    kind = float if spec.type in ("float", float) else int
    try:
        return kind(value)
    except ValueError:
        expected = "a number" if kind is float else "an integer"
        raise ValueError(f"{spec.name}={value!r}: expected {expected}") from None
