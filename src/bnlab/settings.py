"""Settings that state themselves once: type, default, allowed values, help and flag.

A dataclass of settings (``TrainConfig``, ``StudyOptions``) declares each field with
``setting(default, help, ...)``. The field's annotation is its type; the ``Setting`` in its
metadata is everything else. From that one declaration this module derives, with nothing
restated by hand (the pattern of simple_parsing and tyro):

* ``problem(cls, name, value)``: why a value is not allowed (None if it is), and
  ``validate(obj)``, which a dataclass's ``__post_init__`` calls: the first bad field is a
  ``ValueError`` naming the field, the value and what is allowed;
* ``add_flags(parser, cls)``: the command-line flags, each with a checked type (a bad value is
  argparse's one-line usage error, exit 2) and ``(default: X)`` taken from the field itself;
* ``file_keys(cls)``: the keys a config file may hold (internal fields are never read);
* ``bad_values(cls, name)``: strings the flag must refuse, for the tests that prove it does.
"""

from __future__ import annotations

import argparse
import functools
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

__all__ = ["Setting", "add_flags", "bad_values", "file_keys", "flag_of", "flag_table", "like",
           "problem", "setting", "settings", "short", "validate"]

_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
          dict: "a mapping"}


@dataclass(frozen=True)
class Setting:
    """What a field allows and how the command line spells it (see ``setting``)."""

    help: str | Callable[[], str]
    low: float | None = None  # numbers: the range, closed unless open_low/open_high
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    legacy: tuple[str, ...] = ()  # accepted (old config files), not offered
    check: Callable[[Any], str | None] | None = None  # a further rule: why `value` is wrong
    parse: Callable[[str], Any] | None = None  # command-line text -> value (ValueError if bad)
    flag: str | None = None  # default: --field-name (--no-field-name for a switch that is on)
    metavar: str | None = None
    unset: str | None = None  # what None means, for --help ("all", "each layer's own")
    internal: bool = False  # set by bnlab: no flag, never read from a config file
    positional: bool = False
    bad: tuple[str, ...] = ()  # more command-line values the flag must refuse (tests)

    def names(self) -> list[str]:
        found = self.choices() if callable(self.choices) else self.choices
        return list(found or ())

    def text(self) -> str:
        return self.help() if callable(self.help) else self.help


def setting(default: Any, help: str | Callable[[], str], **kw: Any) -> Any:
    """A dataclass field whose metadata is a ``Setting(help, **kw)``."""
    meta = {"setting": Setting(help=help, **kw)}
    if isinstance(default, (dict, list)):
        raise TypeError("a mutable default: use None")
    return field(default=default, metadata=meta)


def like(cls: type, name: str, default: Any = MISSING, **changes: Any) -> Any:
    """A field declared as `cls`'s field `name` (its checks, flag, help), with `changes`: one
    statement of a setting that two dataclasses share."""
    f = {f.name: f for f in fields(cls)}[name]
    spec = replace(f.metadata["setting"], **changes)
    return field(default=f.default if default is MISSING else default,
                 metadata={"setting": spec})


@functools.cache  # (a class's declarations do not change; validation reads them per field)
def settings(cls: Any) -> dict[str, tuple[Setting, tuple[type, ...], Any]]:
    """name -> (Setting, the types it may hold, default) for every field of `cls`, in order.
    The types come from the annotation: ``int | None`` -> (int, NoneType)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        spec = f.metadata.get("setting")
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        hint = hints[f.name]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = tuple(typing.get_origin(k) or k for k in kinds)  # dict[str, Any] -> dict
        out[f.name] = (spec, kinds, None if f.default is MISSING else f.default)
    return out


def short(value: Any) -> str:
    """`value` for an error line: a hostile one may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float) -> str:
    """4294967295, not 4.29497e+09; 0.1, not 0.10000000000000001."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range(spec: Setting, kind: type) -> str:
    """'an integer in [1, 10]', 'a number > 0', 'a number in (0, 1]' ..."""
    what = _NAMES[kind]
    lo, hi = spec.low, spec.high
    if lo is not None and hi is not None:
        return (f"{what} in {'(' if spec.open_low else '['}{_num(lo)}, {_num(hi)}"
                f"{')' if spec.open_high else ']'}")
    if lo is not None:
        return f"{what} {'>' if spec.open_low else '>='} {_num(lo)}"
    if hi is not None:
        return f"{what} {'<' if spec.open_high else '<='} {_num(hi)}"
    return what


def _allowed(spec: Setting, kinds: tuple[type, ...]) -> str:
    """What the field allows, in words."""
    parts = []
    for kind in kinds:
        if kind is type(None):
            parts.append(f"unset{f' ({spec.unset})' if spec.unset else ''}")
        elif kind is str and spec.choices is not None:
            names = spec.names()
            parts.append(f"one of {', '.join(names)}" if len(names) > 1 else repr(names[0]))
        elif kind in (int, float):
            parts.append(_range(spec, kind))
        else:
            parts.append(_NAMES.get(kind, kind.__name__))
    return " or ".join(parts)


def _fits(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if isinstance(value, bool) and kind is not bool:
        return False  # True is an int to Python, not to a config file
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _in_range(spec: Setting, value: float) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low):
        return False
    return spec.high is None or (value < spec.high if spec.open_high else value <= spec.high)


def problem(cls: type, name: str, value: Any) -> str | None:
    """Why `value` is not allowed for field `name` of `cls` (None: it is)."""
    spec, kinds, _ = settings(cls)[name]
    kind = None
    for k in kinds:  # (a loop, not next(genexpr): an abandoned generator is closed later, by
        if _fits(value, k):  # the collector, where a Ctrl-C is "ignored", not an exit 130)
            kind = k
            break
    if kind is None or (kind is str and spec.choices is not None
                        and value not in (*spec.names(), *spec.legacy)):
        return f"must be {_allowed(spec, kinds)}"
    if kind in (int, float) and not _in_range(spec, value):
        return f"must be {_allowed(spec, kinds)}"
    if spec.check is not None and value is not None:
        return spec.check(value)
    return None


def validate(obj: Any) -> None:
    """Every field of the dataclass `obj` allowed, else ValueError naming field, value, rule."""
    cls: Any = type(obj)  # (the class: its declarations are cached)
    for name in settings(cls):
        value = getattr(obj, name)
        why = problem(cls, name, value)
        if why:
            raise ValueError(f"invalid {name}={short(value)}: {why}")


def file_keys(cls: type) -> list[str]:
    """The keys a config file may hold: every field that is not internal."""
    return [n for n, (spec, _, _) in settings(cls).items() if not spec.internal]


def flag_of(cls: type, name: str) -> str | None:
    """The command-line spelling of field `name` (None: internal or positional)."""
    spec, kinds, default = settings(cls)[name]
    if spec.internal or spec.positional:
        return None
    if spec.flag:
        return spec.flag
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if kinds == (bool,) and default is True else f"--{dashed}"


class FlagType:
    """The argparse ``type`` of a generated flag: text -> value, checked by ``problem``."""

    def __init__(self, cls: type, name: str) -> None:
        self.cls, self.name = cls, name
        self.spec, self.kinds, _ = settings(cls)[name]

    def parse(self, text: str) -> Any:
        if self.spec.parse is not None:
            return self.spec.parse(text)
        for kind in (int, float):
            if kind in self.kinds:
                return kind(text)
        return text

    def __call__(self, text: str) -> Any:
        why: str | None
        try:
            value = self.parse(text)
        except ValueError as e:  # a field's own parser says why; int()/float() do not
            why = str(e) if self.spec.parse else f"must be {_allowed(self.spec, self.kinds)}"
        else:
            why = problem(self.cls, self.name, value)
        if why:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {why}")
        return value

    def __repr__(self) -> str:  # argparse names the type in some messages
        return self.name


def _help(spec: Setting, kinds: tuple[type, ...], default: Any) -> str:
    if kinds == (bool,):
        shown = "on" if default else "off"
    elif default is None:
        shown = spec.unset or "unset"
    else:
        shown = f"{default}"
    return f"{spec.text()} (default: {shown})".replace("%", "%%")  # argparse formats %


def add_flags(parser: argparse.ArgumentParser, cls: type, names: Sequence[str] | None = None,
              defaults: dict[str, Any] | None = None) -> None:
    """Add the flags of `cls`'s fields (only `names`, if given) to `parser`; `defaults`
    overrides a field's default for this parser (shown in its help too)."""
    for name, (spec, kinds, default) in settings(cls).items():
        flag = flag_of(cls, name) or name  # (a positional's name)
        if spec.internal or (names is not None and name not in names):
            continue
        default = (defaults or {}).get(name, default)
        text = _help(spec, kinds, default)
        if spec.positional:
            if spec.names():
                parser.add_argument(name, choices=spec.names(), help=spec.text(),
                                    metavar=spec.metavar)
            else:
                parser.add_argument(name, help=spec.text(), metavar=spec.metavar,
                                    type=FlagType(cls, name))
        elif kinds == (bool,):
            parser.add_argument(flag, dest=name, default=default, help=text,
                                action="store_false" if default else "store_true")
        else:
            metavar = spec.metavar or ("{" + ",".join(spec.names()) + "}" if spec.choices
                                       else None)
            parser.add_argument(flag, dest=name, type=FlagType(cls, name),
                                default=default, metavar=metavar, help=text)


def bad_values(cls: type, name: str) -> list[str]:
    """Command-line values that field `name`'s flag must refuse: out of every range it has,
    not of its type, not among its choices, and the field's own examples."""
    spec, kinds, _ = settings(cls)[name]
    out = list(spec.bad)
    if int in kinds or float in kinds:
        out += ["x", "nan", "inf", "-inf", "1e400"]
        if spec.low is not None:
            out.append(_num(spec.low - (0 if spec.open_low else 1)))
        if spec.high is not None:
            out.append(_num(spec.high + (0 if spec.open_high else 1)))
        if float not in kinds:
            out.append("1.5")
    if str in kinds and spec.choices is not None and spec.check is None:
        out.append("no-such-choice")
    return list(dict.fromkeys(out))


def flag_table(cls: type) -> str:
    """The flags of `cls` as a Markdown table (flag, config-file key, default, meaning): the
    README's, checked fresh by a test."""
    lines = ["| flag | config key | default | what it sets |", "|---|---|---|---|"]
    for name, (spec, kinds, default) in settings(cls).items():
        flag = flag_of(cls, name)
        if flag is None:
            continue
        names = spec.names()
        metavar = spec.metavar or ("{" + ",".join(names) + "}" if 0 < len(names) <= 4
                                   else name.upper())
        value = flag if kinds == (bool,) else f"{flag} {metavar}"
        shown = ("on" if default else "off") if kinds == (bool,) else \
            spec.unset if default is None else str(default)
        text = " ".join(spec.text().split()).replace("|", "\\|")
        lines.append(f"| `{value}` | `{name}` | {shown} | {text} |")
    return "\n".join(lines) + "\n"
