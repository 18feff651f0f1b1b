"""Settings fields that document and check themselves: one record per field holds its help
text and what values it allows, read by the dataclass's own check (`check_fields`, from
`__post_init__`), by the command line's flags (their help and their parsing) and by the docs.
No JAX needed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple


class Allowed(NamedTuple):
    """What a field allows: a test of a value and the words for it ("an integer >= 1")."""

    test: Callable[[Any], bool]
    says: str


def integer(minimum: int) -> Allowed:
    return Allowed(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                   f"an integer >= {minimum}")


def number(minimum: float = -math.inf, *, above: bool = False) -> Allowed:
    """A finite number `>= minimum` (`> minimum` with `above`)."""
    says = "a finite number" + ("" if minimum == -math.inf else f" {'>' if above else '>='} {minimum:g}")
    return Allowed(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   and (v > minimum if above else v >= minimum), says)


def optional(allowed: Allowed, none_means: str) -> Allowed:
    return Allowed(lambda v: v is None or allowed.test(v), f"{allowed.says}, or none ({none_means})")


COUNT, NON_NEGATIVE = integer(1), integer(0)  # steps, batch sizes, prompts; patience, shots
SEED = integer(0)
RATE = number(0, above=True)
PENALTY = number(0)
FINITE = number()


def option(default, help: str, allowed: Allowed | None = None) -> Any:
    """A dataclass field with its `help` text and what it allows (None: any value of its type)."""
    return dataclasses.field(default=default, metadata={"help": help, "allowed": allowed})


class FieldError(ValueError):
    """A settings field holding a value it does not allow."""

    def __init__(self, owner: str, field: str, value, allowed: str):
        self.owner, self.field, self.value, self.allowed = owner, field, value, allowed
        super().__init__(f"{owner}.{field}={value!r}: must be {allowed}")


def check_value(name: str, value, allowed: Allowed) -> None:
    """A ValueError naming `name`, `value` and what is allowed, unless `allowed` allows it (for a
    function's arguments, as `check_fields` for a dataclass's fields)."""
    if not allowed.test(value):
        raise ValueError(f"{name}={value!r}: must be {allowed.says}")


def check_fields(settings) -> None:
    """Raise a `FieldError` for the first field of the dataclass `settings` whose value its
    `option` does not allow."""
    for field in dataclasses.fields(settings):
        allowed, value = field.metadata.get("allowed"), getattr(settings, field.name)
        if allowed is not None and not allowed.test(value):
            raise FieldError(type(settings).__name__, field.name, value, allowed.says)


def help_of(field: dataclasses.Field) -> str | None:
    return field.metadata.get("help")


def allowed_of(field: dataclasses.Field) -> Allowed | None:
    return field.metadata.get("allowed")
