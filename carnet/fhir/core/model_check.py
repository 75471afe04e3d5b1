"""A fast check of FHIR R4 JSON, compiled from fhir.resources' own R4B models.

`carnet import` validates every resource it reads; building fhir.resources' model tree for each
one was most of an import's time. This walks the JSON against the same models' field tables
instead (element names, cardinality, required elements, one of a choice, nested types), and
checks each primitive value with the model's own annotated type (memoised: codes, systems and
units repeat). It is a sound shortcut, not a second validator: `conforms` answers True only
for a resource it could check whole; anything else (an unknown element, `_element` primitive
extensions, a contained resource, a value of the wrong type...) answers False, and the caller
then runs fhir.resources itself, which gives the verdict and the message. An agreement test
holds it to fhir.resources on every resource of a third-party cohort.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

_MEMO_LIMIT = 50_000  # verdicts kept per primitive type


@dataclass(frozen=True)
class _Field:
    many: bool
    model: Any | None  # a complex type's model; None for a primitive
    primitive: TypeAdapter[Any] | None  # the primitive's own annotated type, as a validator
    # The primitive's verdicts so far, shared by every field of its type: by value for a string
    # (most of them), by (type, value) otherwise (True == 1 == 1.0 would meet as dict keys).
    memo: dict[Any, bool] | None = None


@dataclass(frozen=True)
class _Spec:
    fields: dict[str, _Field]
    required: frozenset[str]
    choices: tuple[tuple[frozenset[str], bool], ...]  # (the names of one choice, required)
    resource_type: str | None


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(is a list, the item type) of `Optional[List[X]]`, `X | None`, `List[X]`, `X`."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
            continue
        if origin in (list, typing.List) and len(args) == 1:  # noqa: UP006
            many = True
            annotation = args[0]
            continue
        return many, annotation


@cache
def _spec(model: Any) -> _Spec:
    fields: dict[str, _Field] = {}
    required: set[str] = set()
    groups: dict[str, tuple[set[str], bool]] = {}
    for name, info in model.model_fields.items():
        if name == "fhir_comments" or name.endswith("__ext"):
            continue
        alias = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        many, item = _unwrap(info.annotation)
        klass = getattr(item, "get_model_klass", None)
        if klass is not None:
            target = klass()
            if getattr(target, "__resource_type__", None) == "Resource":
                continue  # a contained resource: not checked here (the caller falls back)
            fields[alias] = _Field(many, target, None)
        else:
            adapter = _adapter(item)
            fields[alias] = _Field(many, None, adapter, _memo_of(adapter))
        if info.is_required() or extra.get("element_required"):
            required.add(alias)
        group = extra.get("one_of_many")
        if isinstance(group, str):
            groups.setdefault(group, (set(), bool(extra.get("one_of_many_required"))))[0].add(alias)
    choices = tuple((frozenset(names), needed) for names, needed in groups.values())
    return _Spec(fields, frozenset(required), choices, getattr(model, "__resource_type__", None))


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


@cache
def _memo_of(adapter: TypeAdapter[Any]) -> dict[Any, bool]:
    return {}


_CONTAINERS = (dict, list)


def _primitive(adapter: TypeAdapter[Any], memo: dict[Any, bool], key: Any, value: Any) -> bool:
    """The adapter's verdict on a value the memo does not hold yet."""
    try:
        adapter.validate_python(value)
        ok = True
    except (ValidationError, ValueError, TypeError, AttributeError):
        ok = False  # fhir_core's validators raise more than ValidationError on odd values
    if len(memo) < _MEMO_LIMIT:
        memo[key] = ok
    return ok


def _element(model: Any, value: Any, top: bool) -> bool:
    # Every element of every imported resource comes through here: the common case (a value
    # whose verdict is known) costs two dictionary lookups and no call.
    if not isinstance(value, dict) or not value:
        return False
    spec = _spec(model)
    fields = spec.fields
    for key, item in value.items():
        if key == "resourceType" and top:
            if item != spec.resource_type:
                return False
            continue
        field = fields.get(key)
        if field is None:
            return False  # unknown, `_element` extensions, contained: fhir.resources decides
        items: list[Any] | tuple[Any]
        if field.many:
            if not isinstance(item, list) or not item:
                return False
            items = item
        else:
            if isinstance(item, list):
                return False
            items = (item,)
        child = field.model
        if child is not None:
            for one in items:
                if not _element(child, one, False):
                    return False
            continue
        memo, adapter = field.memo, field.primitive
        if memo is None or adapter is None:
            return False
        for one in items:
            if one is None or isinstance(one, _CONTAINERS):
                return False
            memo_key = one if type(one) is str else (type(one), one)
            known = memo.get(memo_key)
            if known is None:
                known = _primitive(adapter, memo, memo_key, one)
            if not known:
                return False
    if not spec.required <= value.keys():
        return False
    for names, needed in spec.choices:
        present = len(names & value.keys())
        if present > 1 or (needed and present == 0):
            return False
    return True


def conforms(resource: Any) -> bool:
    """True when `resource` is FHIR R4 as fhir.resources' R4B model of its type reads it, as far
    as this check can tell; False means: not sure, ask fhir.resources."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return False
    try:
        model = get_fhir_model_class(resource["resourceType"])
    except (KeyError, ValueError):
        return False
    return _element(model, resource, True)
