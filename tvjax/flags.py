"""Command-line flags made from settings: a flag per dataclass field, helped by the field's help
text and checked against what it allows as it is parsed (`tvjax.fields`), help that shows every
default, and parse errors in one line."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from tvjax.fields import Allowed, allowed_of, help_of


class Parser(argparse.ArgumentParser):
    """Every flag's default in its help, and errors in one line (no usage block)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=WithDefaults, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class WithDefaults(argparse.HelpFormatter):
    """Help texts end with the flag's default, unless they say it or it is unset (None, off)."""

    def _get_help_string(self, action) -> str:
        help = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in help or unset or not action.option_strings:
            return help
        return help + " (default: %(default)s)"


def add_config_flags(parser, defaults, prefix: str = "", *, skip=(), help=None, aliases=None) -> None:
    """A flag `--<prefix><field-name>` for each field of the dataclass instance `defaults` (but `skip`).

    Each flag defaults to the field's value in `defaults`, is helped by the field's help text
    and checked against what it allows (`tvjax.fields.option`) as it is parsed, and stores into
    `<prefix><field_name>` (dashes as underscores), where `config_from_flags` reads it back. Bool
    fields are switches (`store_true`); `int | None` fields take an int. `help` / `aliases` give,
    per field, another help text / more option strings (`{"k": ["--k"]}`).
    """
    help, aliases = help or {}, aliases or {}
    hints = typing.get_type_hints(type(defaults))
    for field in dataclasses.fields(defaults):
        if field.name in skip:
            continue
        flags = ["--" + (prefix + field.name).replace("_", "-"), *aliases.get(field.name, ())]
        if hints[field.name] is bool:
            options = {"action": "store_true"}
        elif typing.get_origin(hints[field.name]) is typing.Literal:  # a choice (tvjax.vocabulary)
            options = {"choices": typing.get_args(hints[field.name]), "default": getattr(defaults, field.name)}
        else:
            kind = _flag_type(hints[field.name])
            options = {"type": checked(kind, allowed_of(field)), "metavar": kind.__name__.upper(),
                       "default": getattr(defaults, field.name)}
        parser.add_argument(*flags, dest=_dest(prefix, field.name), help=help.get(field.name, help_of(field)),
                            **options)


def checked(kind: type, allowed: Allowed | None):
    """A flag's parser: `kind` of the text, refused (one line naming the value and what is allowed)
    unless `allowed`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an' if kind is int else 'a'} "
                                             f"{ {int: 'integer', float: 'number'}.get(kind, kind.__name__)}") from None
        if allowed is not None and not allowed.test(value):
            raise argparse.ArgumentTypeError(f"{text}: must be {allowed.says}")
        return value

    parse.__name__ = kind.__name__  # what argparse names in its own messages
    return parse


def config_from_flags(args, defaults, prefix: str = ""):
    """`defaults` with each field that has a value in `args`, under the name `add_config_flags(..., prefix)`
    stores its flag in."""
    dests = {f.name: _dest(prefix, f.name) for f in dataclasses.fields(defaults)}
    return dataclasses.replace(defaults, **{k: getattr(args, d) for k, d in dests.items() if hasattr(args, d)})


def _flag_type(hint):
    """The type a flag's value is parsed as: `hint` itself, or `T` for `T | None`."""
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")
