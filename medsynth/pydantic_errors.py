"""One line per pydantic validation error: the field path, the value given and what is allowed.

Pydantic's own messages name a field and a type ("Input should be a valid integer"); a user
of a protocol or config file wants ``quotas[1].count: '12' ...; expected a whole number`` and,
for a typo, the allowed keys with the closest one. Union members tagged ``<name>``
(``pydantic.Tag``) are not keys, so field paths leave them out.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


def format_loc(loc: tuple[Any, ...]) -> str:
    """``('quotas', 1, 'count')`` -> ``quotas[1].count``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):  # a union member's tag, not a key
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the mapping at ``loc`` (for listing allowed keys)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.startswith("<")):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
        if model is None:
            return None
    return model


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_EXPECTED = {
    "int_type": "expected a whole number (no quotes, no decimals, not true/false)",
    "float_type": "expected a number (not quoted, not true/false)",
    "string_type": "expected text",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "model_type": "expected a mapping (key: value entries)",
    "dict_type": "expected a mapping (key: value entries)",
    "missing": "a required key is missing",
}


def describe_error(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One line for one pydantic error of validating ``root``: the field path, the value and what is allowed."""
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    where = format_loc(loc)
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        allowed = sorted(owner.model_fields) if owner else []
        key = str(loc[-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        msg = f"{where}: unknown key {key!r}"
        if allowed:
            msg += f"; allowed keys here: {', '.join(allowed)}"
        if hint:
            msg += f" (did you mean {hint[0]!r}?)"
        return msg
    if kind == "missing":
        return f"{where}: {_EXPECTED['missing']}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        msg = f"{where}: {short_repr(err['input'])} is not allowed; expected one of {expected}"
        if isinstance(err["input"], bool):
            msg += " (YAML reads unquoted yes/no/on/off as true/false: quote the value)"
        return msg
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"{where}: {short_repr(err['input'])} is out of range; expected a value {op} {bound}"
    if kind == "string_pattern_mismatch":  # the patterned fields are names (a protocol's name:)
        return (
            f"{where}: {short_repr(err['input'])} is not allowed; expected letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 64)"
        )
    if kind == "too_short":
        return f"{where}: expected at least {ctx.get('min_length', 1)} entry; got {short_repr(err['input'])}"
    if kind == "value_error":
        reason = str(ctx.get("error", err["msg"]))
        if not loc:
            return reason
        return f"{where}: {reason} (got {short_repr(err['input'])})"
    if kind in _EXPECTED:
        return f"{where}: {_EXPECTED[kind]}; got {short_repr(err['input'])}"
    return f"{where}: {err['msg']}; got {short_repr(err['input'])}"


def error_lines(exc: ValidationError, root: type[BaseModel], source: str) -> list[str]:
    """Every problem of ``exc`` as one line naming ``source``, duplicates dropped, in order."""
    return list(dict.fromkeys(f"{source}: {describe_error(e, root)}" for e in exc.errors()))
