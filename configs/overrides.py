"""YAML reading and ``--set`` value typing for the config loader (configs/schema.py).

Kept apart from the schema so the rules for turning text into a config tree live in one small
place:

- YAML is read with a SafeLoader that refuses duplicate keys (PyYAML keeps the last one
  silently, so a repeated section would drop half of a preset without a word).
- ``--set`` values are YAML, but typed by the field they land in: where the schema expects a
  string, a scalar stays the text that was typed (``resources.default.cpu=2`` is ``"2"``,
  ``ingest.include=*.jsonl`` is not a YAML alias); where it expects a list, one scalar becomes a
  one-element list (``ingest.corpus=/data/x``).
- A boolean is never a number: pydantic would read ``max_files: true`` as 1.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that raises on a key repeated in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"duplicate key {key!r} (first set on line {first[key] + 1})",
                            key_node.start_mark,
                        )
                    first[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: the base class reports it
                    break
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass


def describe_yaml_error(e: yaml.YAMLError) -> str:
    """One line: 'line L, column C: problem' (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    what = f"{context}: {problem}" if context and "duplicate key" not in problem else problem
    what = " ".join(what.split())
    if mark is None:
        return what
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


# ---------------------------------------------------------------------------------------
# Field types


def _members(ann: Any) -> tuple[Any, ...]:
    """The alternatives of a Union / Optional annotation, else (ann,)."""
    if get_origin(ann) in (Union, types.UnionType):
        return get_args(ann)
    return (ann,)


def _field(model: type[BaseModel], key: str):
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the field at ``path`` under ``model``; None where the path is unknown
    (the validator then reports the unknown key)."""
    ann: Any = model
    for part in path:
        nxt = None
        for m in _members(ann):
            if isinstance(m, type) and issubclass(m, BaseModel):
                f = _field(m, part)
                nxt = f.annotation if f is not None else None
            elif get_origin(m) is dict:
                nxt = get_args(m)[1]
            if nxt is not None:
                break
        if nxt is None:
            return None
        ann = nxt
    return ann


def _accepts_str(ann: Any) -> bool:
    for m in _members(ann):
        if m is str:
            return True
        if get_origin(m) is Literal and all(isinstance(a, str) for a in get_args(m)):
            return True
    return False


def _list_item(ann: Any) -> Any:
    """X of list[X] (or list[X] | None); None when the field is not a list."""
    for m in _members(ann):
        if get_origin(m) in (list, typing.List):  # noqa: UP006
            args = get_args(m)
            return args[0] if args else Any
    return None


def _number_only(ann: Any) -> bool:
    members = _members(ann)
    return bool({int, float} & set(members)) and bool not in members


_SCALARS = (bool, int, float)


def typed_override(ann: Any, raw: str, parse: Any) -> Any:
    """The value of ``--set key=raw`` for a field annotated ``ann``.

    ``parse()`` returns the YAML value of ``raw`` (it may raise yaml.YAMLError).
    """
    raw = raw.strip()
    if ann is None:
        return parse()
    item = _list_item(ann)
    if not raw and item is not None:
        return []  # 'ingest.exclude=': an empty list, not ['']
    try:
        value = parse()
    except yaml.YAMLError:
        # '*.jsonl' is a YAML alias, '%x' a directive: plain text is what a string field
        # wants. A '[', '{' or quote means YAML was meant; then its error is the answer.
        if raw[:1] in "[{\"'":
            raise
        if _accepts_str(ann):
            return raw
        if item is not None and _accepts_str(item):
            return [raw]
        raise
    if isinstance(value, _SCALARS) and _accepts_str(ann) and not any(
        isinstance(value, t) and t in _members(ann) for t in _SCALARS
    ):
        return raw  # '2' for a str field: the text typed, not str(2.0) of a float
    if item is not None and value is not None and not isinstance(value, (list, dict)):
        if isinstance(value, _SCALARS) and _accepts_str(item):
            return [raw]
        return [value]
    return value


def booleans_for_numbers(tree: Any, model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths in ``tree`` where a true/false sits in a field that takes only numbers."""
    found: list[tuple[str, ...]] = []
    if not isinstance(tree, dict):
        return found
    for key, value in tree.items():
        ann = annotation_at(model, [*path, str(key)])
        if ann is None:
            continue
        here = (*path, str(key))
        if isinstance(value, bool) and _number_only(ann):
            found.append(here)
        elif isinstance(value, dict):
            found += booleans_for_numbers(value, model, here)
        elif isinstance(value, list) and isinstance(_list_item(ann), type) and _number_only(_list_item(ann)):
            found += [(*here, str(i)) for i, v in enumerate(value) if isinstance(v, bool)]
    return found
