"""YAML as configuration files are read: safe (no tags execute) and with every key given once.

``yaml.safe_load`` keeps the last of two equal keys silently, so a protocol or config with
``seed:`` twice would run with a value its author may not have meant; ``load_yaml`` refuses it.
"""

from __future__ import annotations

from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML text (``yaml.YAMLError`` on bad YAML, a tag or a repeated key)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def describe_yaml_error(exc: yaml.YAMLError, what: str) -> str:
    """`` line L, column C: not valid <what> YAML: <problem>`` in one line (the caller prefixes the file)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if "could not determine a constructor" in str(problem):
        problem = f"{problem.strip()}: YAML tags are not allowed in a {what} (it is read with yaml.safe_load)"
    return f"{where} not valid {what} YAML: {' '.join(str(problem).split())}"
