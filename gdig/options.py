"""Settings dataclasses as the single source of defaults and help text: a field declared with `option(...)`
carries its help, choices and label in its metadata; the command line (`add_options`, `from_args`) and the New
run page (`specs`) are built from it, so a default changed in the dataclass changes everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    label: str | None = None,
    flag: str | None = None,
    minimum: float | None = None,
    cli: bool = True,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its help text, allowed values, UI label and command-line flag (default: the
    field's name with dashes; a bool that defaults to True gets `--no-NAME`)."""
    meta = {"help": help, "choices": choices, "label": label, "flag": flag, "minimum": minimum, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """One documented setting, as a command line or a form needs it."""

    name: str
    kind: type  # bool, int, float or str
    optional: bool  # None is a value (shown as 0 or empty in a form)
    default: Any
    help: str
    label: str
    choices: tuple | None
    minimum: float | None
    flag: str
    cli: bool


def specs(cls: type) -> dict[str, OptionSpec]:
    """Every documented field of a settings dataclass, by name (nested dataclasses are not included)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, optional = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        meta = f.metadata
        flag = meta["flag"] or ("--no-" if kind is bool and default else "--") + f.name.replace("_", "-")
        label = meta["label"] or f.name.replace("_", " ").capitalize()
        out[f.name] = OptionSpec(
            f.name, kind, optional, default, meta["help"], label, meta["choices"], meta["minimum"], flag, meta["cli"]
        )
    return out


def _kind(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    group: Any = None,
) -> None:
    """Add a --flag for every documented field of `cls` (or those in `only`), with its default and help."""
    target = group or parser
    for name, s in specs(cls).items():
        if not s.cli or name in skip or (only is not None and name not in only):
            continue
        if s.kind is bool:
            action = "store_false" if s.default else "store_true"
            target.add_argument(s.flag, dest=name, action=action, help=s.help.replace("%", "%%"))
            continue
        shown = "" if s.default is None or s.choices else f" (default: {s.default})"
        target.add_argument(
            s.flag,
            dest=name,
            type=s.kind,
            default=s.default,
            choices=s.choices,
            required=s.default is None and not s.optional,
            help=(s.help + shown).replace("%", "%%"),
        )


def from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """`cls` from the parsed command line: every field the parser has (an unset flag of a field that cannot be
    None keeps the dataclass default), plus `given`."""
    known = specs(cls)
    values = {k: v for k, v in vars(args).items() if k in known and (v is not None or known[k].optional)}
    return cls(**(values | given))


def to_args(obj: Any, only: tuple[str, ...] | None = None) -> list[str]:
    """The command line that `add_options` + `from_args` read back as `obj` (every documented CLI field that is
    set; a bool only when it differs from its default): how the app starts a command as a worker."""
    out: list[str] = []
    for name, s in specs(type(obj)).items():
        value = getattr(obj, name)
        if not s.cli or (only is not None and name not in only) or value is None:
            continue
        if s.kind is bool:
            out += [s.flag] if value != s.default else []
        else:
            out += [s.flag, str(value)]
    return out
