"""A small declarative schema for TOML profiles.

Why not a JSON-Schema library: the gateway install stays small, and a technician needs messages that
name the file, the dotted key, the line and what was expected, all problems at once, not the first.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Problem:
    """One thing wrong in one file, phrased for the person who has to fix it."""

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}"


class ProfileError(Exception):
    """A profile that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# TOML integers are 64-bit (toml.io); tomllib reads any number of digits, and float() of a 400-digit one
# raised OverflowError out of the validator (a traceback from `edge-ems check`).
MAX_INT = 2 ** 63 - 1


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return -MAX_INT <= v <= MAX_INT if isinstance(v, int) else math.isfinite(v)


def _short(value: Any) -> str:
    """repr of a value for a message, cut (a 5000-character string is not a message)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
        return f"an integer of {value.bit_length()} bits (TOML integers are 64-bit)"   # str() may refuse it
    try:
        text = repr(value)
    except ValueError:                      # a nested integer of more than 4300 digits
        text = f"a {_type_name(value)}"
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


@dataclass
class Field:
    """A scalar or array value. kind: 'number', 'integer', 'string', 'boolean', 'numbers' (list)."""

    kind: str
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    choices: tuple | None = None
    length: tuple[int, ...] | None = None  # allowed lengths for 'numbers'
    doc: str = ""

    def expected(self) -> str:
        parts = {"number": "a number", "integer": "an integer", "string": "a string",
                 "boolean": "true or false", "numbers": "an array of numbers",
                 "number_or_numbers": "a number or an array of numbers",
                 "curve": "an array of [x, y] pairs with x increasing (2 to 8 points)"}[self.kind]
        if self.choices:
            parts = "one of " + ", ".join(repr(c) for c in self.choices)
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else (f"> {self.min}" if self.min_exclusive else f">= {self.min}")
            hi = "" if self.max is None else f"<= {self.max}"
            parts += " " + " and ".join(p for p in (lo, hi) if p)
        if self.length:
            parts += f" of length {' or '.join(str(n) for n in self.length)}"
        return parts

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Return (normalised value, None) or (None, what is wrong)."""
        kind = self.kind
        if kind == "number_or_numbers":
            kind = "numbers" if isinstance(value, list) else "number"
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, f"expected {self.expected()}, got {_type_name(value)} {_short(value)}"
            if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
                return None, f"expected {self.expected()}, got {_short(value)}"
            value = float(value)
            if not math.isfinite(value):
                return None, f"expected a finite number, got {_short(value)}"
            return self._range(value)
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return None, f"expected {self.expected()}, got {_type_name(value)} {_short(value)}"
            if not -MAX_INT <= value <= MAX_INT:
                return None, f"expected {self.expected()}, got {_short(value)}"
            return self._range(value)
        if kind == "string":
            if not isinstance(value, str):
                return None, f"expected {self.expected()}, got {_type_name(value)} {_short(value)}"
            if self.choices and value not in self.choices:
                return None, f"expected {self.expected()}, got {_short(value)}"
            return value, None
        if kind == "boolean":
            if not isinstance(value, bool):
                return None, f"expected true or false, got {_type_name(value)} {_short(value)}"
            return value, None
        if kind == "curve":
            ok = (isinstance(value, list) and 2 <= len(value) <= 8 and all(
                isinstance(p, list) and len(p) == 2 and all(_finite_number(v) for v in p) for p in value))
            if not ok:
                return None, f"expected {self.expected()}, got {_short(value)}"
            xs = [float(p[0]) for p in value]
            if any(b <= a for a, b in zip(xs, xs[1:])):
                return None, f"expected x values strictly increasing, got {xs}"
            if self.min is not None or self.max is not None:
                for p in value:
                    _, err = self._range(float(p[1]))
                    if err:
                        return None, "curve y " + err
            return [[float(x), float(y)] for x, y in value], None
        if kind == "numbers":
            if not isinstance(value, list) or not all(_finite_number(v) for v in value):
                return None, f"expected {self.expected()}, got {_short(value)}"
            if self.length and len(value) not in self.length:
                return None, f"expected {self.expected()}, got {len(value)} values"
            values = [float(v) for v in value]
            for v in values:
                _, err = self._range(v)
                if err:
                    return None, err
            return values, None
        raise AssertionError(kind)

    def _range(self, value):
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            return None, f"expected {self.expected()}, got {_short(value)}"
        if self.max is not None and value > self.max:
            return None, f"expected {self.expected()}, got {_short(value)}"
        if self.choices and value not in self.choices:
            return None, f"expected {self.expected()}, got {_short(value)}"
        return value, None


@dataclass
class Table:
    """A TOML table with a fixed set of keys."""

    fields: dict[str, Any]
    required: bool = False
    doc: str = ""


@dataclass
class MapOf:
    """A table whose keys are names the user picks (e.g. buses.rs485_1), each an `item`."""

    item: Any
    required: bool = False


@dataclass
class ArrayOf:
    """An array of tables ([[devices]])."""

    item: Any
    required: bool = False
    min_items: int = 0


@dataclass
class Validator:
    """Walks a parsed TOML document against a schema, collecting every problem with its line."""

    file: str
    text: str
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self):
        self._lines = key_lines(self.text)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, key, message, self.line_of(key)))

    def line_of(self, key: str) -> int | None:
        probe = key
        while probe:
            if probe in self._lines:
                return self._lines[probe]
            probe = probe.rpartition(".")[0]
        return None

    def walk(self, schema: Any, value: Any, key: str) -> Any:
        if isinstance(schema, Field):
            checked, err = schema.check(value)
            if err:
                self.problem(key, err)
            return checked
        if isinstance(schema, Table):
            if not isinstance(value, dict):
                self.problem(key, f"expected a table, got {_type_name(value)}")
                return None
            out = {}
            for name in value:
                if name not in schema.fields:
                    known = ", ".join(sorted(schema.fields))
                    self.problem(_join(key, name), f"unknown key (known keys here: {known})")
            for name, sub in schema.fields.items():
                sub_key = _join(key, name)
                if name in value:
                    out[name] = self.walk(sub, value[name], sub_key)
                elif getattr(sub, "required", False):
                    self.problem(sub_key, f"missing; expected {_expected(sub)}")
                elif isinstance(sub, Field):
                    out[name] = sub.default
                elif isinstance(sub, MapOf):
                    out[name] = {}
                elif isinstance(sub, ArrayOf):
                    out[name] = []
                elif isinstance(sub, Table) and not any(getattr(f, "required", False) for f in sub.fields.values()):
                    out[name] = self.walk(sub, {}, sub_key)     # all defaults
                else:
                    out[name] = None                             # an optional table left out (no genset)
            return out
        if isinstance(schema, MapOf):
            if not isinstance(value, dict):
                self.problem(key, f"expected a table of named entries, got {_type_name(value)}")
                return {}
            return {name: self.walk(schema.item, sub, _join(key, name)) for name, sub in value.items()}
        if isinstance(schema, ArrayOf):
            if not isinstance(value, list):
                self.problem(key, f"expected an array of tables ([[{key}]]), got {_type_name(value)}")
                return []
            if len(value) < schema.min_items:
                self.problem(key, f"expected at least {schema.min_items} entries, got {len(value)}")
            return [self.walk(schema.item, sub, f"{key}[{i}]") for i, sub in enumerate(value)]
        raise AssertionError(schema)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _expected(schema: Any) -> str:
    if isinstance(schema, Field):
        return schema.expected()
    if isinstance(schema, ArrayOf):
        return "an array of tables"
    return "a table"


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def key_lines(text: str) -> dict[str, int]:
    """Map dotted keys ('devices[1].bus', 'battery.soc_min_pct') to 1-based line numbers.

    tomllib reports lines only for syntax errors; this recovers them for semantic ones, covering the
    plain `[table]`, `[[array]]` and `key = value` forms our profiles use.
    """
    lines: dict[str, int] = {}
    counters: dict[str, int] = {}
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        head = _HEADER.match(line)
        if head:
            name = head.group(2).replace('"', "").replace("'", "").strip()
            if head.group(1) == "[[":
                index = counters.get(name, -1) + 1
                counters[name] = index
                current = f"{name}[{index}]"
            else:
                current = name
            lines.setdefault(current, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault(_join(current, key.group(1)), number)
    return lines


def check_all(checks: list[tuple[bool, str, str]], validator: Validator) -> None:
    """Cross-field rules: each (ok, key, message) that is not ok becomes a problem."""
    for ok, key, message in checks:
        if not ok:
            validator.problem(key, message)


Check = Callable[[dict, Validator], None]
