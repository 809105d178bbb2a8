"""What every config section shares: the error that lists every problem, building nested
dataclasses from JSON while collecting problems, and the option reference generated from the
fields' docstrings."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; the message lists every bad option and its fix."""

    def __init__(self, owner: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {owner} ({len(problems)} problem(s)):\n{lines}")



def non_finite(value: Any, where: str = "") -> list[tuple[str, float]]:
    """(key, value) of every NaN or infinite number inside ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(where or "config", value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        return [x for i, v in enumerate(value) for x in non_finite(v, f"{where}[{i}]")]
    return []


def field_defaults(cls) -> dict[str, Any]:
    """The defaults of a config dataclass's fields, nested sections as dicts (no validation runs)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = field_defaults(type(value)) if dataclasses.is_dataclass(value) else value
    return out


def build_dataclass(cls, data: Any, where: str, problems: list[str]):
    """Instantiate dataclass ``cls`` from ``data``, collecting problems instead of stopping at the
    first: a section that fails leaves its problems and the others are still built and checked
    (the failed one at its default, whose cross-checks are then not reported). Returns None when
    anything failed."""
    if not isinstance(data, dict):
        problems.append(f"{where or 'config'} must be a JSON object, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    mine: list[str] = []
    unknown = sorted(set(data) - known)
    if unknown:
        mine.append(f"{where or 'config'}: unknown option(s) {unknown}; known: {sorted(known)}")
    kwargs, failed = {}, []
    for name in sorted(known & set(data)):
        value, hint, here = data[name], hints[name], f"{where}.{name}" if where else name
        before = len(mine)
        kwargs[name] = _field_value(hint, value, here, mine)
        if len(mine) > before:
            failed.append(name)
            kwargs.pop(name)
    try:
        built = cls(**kwargs)
    except ConfigError as err:
        # checks across sections that involve a failed one compare against its default: left out
        mine += [p for p in err.problems if not any(p.startswith((f"{f}.", f"{f}=")) or f" {f}." in p for f in failed)]
        built = None
    except (TypeError, ValueError):  # a value of the wrong type that a check could not even compare
        built = None
        if not mine:
            raise
    problems += mine
    return None if mine else built


def _field_value(hint, value, here: str, problems: list[str]):
    """The value of one field: a nested section built, a list of sections, a tuple from a list."""
    if dataclasses.is_dataclass(hint) and hasattr(hint, "from_dict"):  # a section that validates itself
        try:
            return hint.from_dict(value) if isinstance(value, dict) else value
        except ConfigError as err:
            problems += [f"{here}.{p}" for p in err.problems]
            return None
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, here, problems)
    if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        if not isinstance(value, list):
            problems.append(f"{here} must be a list")
            return None
        items = [build_dataclass(typing.get_args(hint)[0], v, f"{here}[{i}]", problems) for i, v in enumerate(value)]
        return [v for v in items if v is not None]
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (the string literal after its line)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def option_reference(cls, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """Every option of dataclass ``cls`` as (dotted key, default as JSON, meaning), nested
    sections flattened (``uio.encoder_lora.rank``; list items as ``data.sources[].path``).
    ``defaults``: an instance whose values are shown instead of the class defaults."""
    import typing

    hints, docs = typing.get_type_hints(cls), _field_docs(cls)
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        key, hint, doc = prefix + f.name, hints[f.name], docs.get(f.name, "")
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nested = hint if dataclasses.is_dataclass(hint) else next(
            (a for a in args if dataclasses.is_dataclass(a)), None)
        if nested is not None and typing.get_origin(hint) is list:  # a list of sections
            rows.append((key, "[]", doc))
            rows += option_reference(nested, key + "[].")
        elif nested is not None:
            if default is None:  # an optional section: say so, then list what it takes
                rows.append((key, "null", doc))
            rows += option_reference(nested, key + ".", default)
        else:
            rows.append((key, json.dumps(default), doc))
    return rows
