"""Strict pydantic models and one error format for every configuration section.

An unknown key, a wrong type or an out-of-range value becomes one message naming the key
(``model.threads``, ``events.groups.dog.threshold_on``), the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from soundwatch.errors import SoundwatchError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_whole_frames(**durations: float) -> None:
    """Window, hop and step lengths must be whole 10 ms frames (no silent rounding)."""
    for name, seconds in durations.items():
        if abs(seconds * 100 - round(seconds * 100)) > 1e-6:
            raise ValueError(f"{name} ({seconds} s) must be a multiple of 0.01 s (one frame)")


def check_hop_within_window(window: float, hop: float, unit: str = "s") -> None:
    """A hop longer than its window would leave audio between windows untagged."""
    if hop > window:
        raise ValueError(
            f"hop ({hop:g} {unit}) is longer than window ({window:g} {unit}): audio between "
            "windows would never be tagged; use a hop <= window"
        )


def check_off_not_above_on(off: float | None, on: float | None) -> None:
    """Hysteresis ends an event below ``threshold_off``: it may not exceed ``threshold_on``."""
    if off is not None and on is not None and off > on:
        raise ValueError(
            f"threshold_off ({off:g}) is above threshold_on ({on:g}); hysteresis needs off <= on"
        )


def _location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def format_validation_error(
    error: ValidationError, origin: str, prefix: tuple[str, ...] = ()
) -> str:
    """``invalid configuration in <origin>:`` and one line per problem."""
    lines = [f"invalid configuration in {origin}:"]
    for item in error.errors():
        key = _location((*prefix, *item["loc"])) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check its spelling; see config.yaml for all keys)")
            continue
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {key}: {message} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_section(model: type[M], data: Any, origin: str, prefix: tuple[str, ...] = ()) -> M:
    """Validate ``data`` as ``model``; errors name keys under ``prefix`` (``events.``)."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as error:
        raise SoundwatchError(format_validation_error(error, origin, prefix)) from None
