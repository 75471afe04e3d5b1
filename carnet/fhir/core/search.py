"""FHIR search (R4 §3.1.1), one engine for every resource type.

A module declares how its type is searched in one `Search`: its parameters (name -> where the
values are in the resource, by type), how the gate reads one patient's section (`fetch`) and
one resource (`read`, for `_id` and `_include`), the references `_include` may follow, and
optionally a `source` for searches that are not about one named patient (the Patient search
itself, a clinician's own worklists). The engine does the rest alike for every type: modifiers,
prefixes, chains, `_sort`, paging, `_total`, `_summary`, `_elements`, `_include`, `_revinclude`,
strict or lenient handling, and the `self` link showing only the parameters used.

No browsing: a search of patient data names its patient (`patient=`, `subject=`), finds them
through the patient search and its rules (a chain: `subject:Patient.identifier=`,
`patient.family=`), or is a worklist the gate scopes to the actor's own care. Every resource
that leaves, matched or included, was read through the gate: authorized, audited, counted.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from carnet.fhir.core.api import MAX_COUNT, base_url, fhir_response, gate_for, reference_id
from carnet.fhir.core.outcome import Unsupported
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.phi.gate import Gate

Resource = dict[str, Any]


# == declarations ==============================================================================
@dataclass(frozen=True)
class Param:
    """One search parameter: its FHIR type and where its values are in the resource (dotted
    paths; lists are walked through)."""

    type: str  # token | date | string | reference
    paths: tuple[str, ...]
    target: str | None = None  # the resource type a reference points to


def token(*paths: str) -> Param:
    return Param("token", paths)


def date(*paths: str) -> Param:
    return Param("date", paths)


def string(*paths: str) -> Param:
    return Param("string", paths)


def reference(*paths: str, target: str | None = None) -> Param:
    return Param("reference", paths, target)


@dataclass(frozen=True)
class Criterion:
    name: str
    param: Param
    modifier: str | None
    values: tuple[str, ...]  # OR'ed; several criteria of one name are AND'ed


@dataclass
class Query:
    """A search request, parsed: what is matched, what is asked of the answer."""

    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    # reference parameter -> chained criteria on its target (the patient search)
    chains: dict[str, list[Criterion]] = field(default_factory=dict)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (name, descending)
    count: int = 20
    page: int = 1
    total: str = "accurate"
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    include: list[tuple[str, str, str | None]] = field(default_factory=list)
    revinclude: list[tuple[str, str, str | None]] = field(default_factory=list)
    # `_has:Type:reference:parameter=value`: resources another type's search points to
    has: list[tuple[str, str, str, str]] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)  # what the self link shows

    def named(self, *names: str) -> list[Criterion]:
        return [c for c in self.criteria if c.name in names]


@dataclass(frozen=True)
class Found:
    """What a source found: the matches (all of them, or one page when the gate pages)."""

    resources: list[Resource]
    paged: bool = False
    has_more: bool = False
    consumed: frozenset[str] = frozenset()  # criteria the source applied itself


Fetch = Callable[[Gate, str], Sequence[Resource]]
Read = Callable[[Gate, str], Resource]
Source = Callable[[Gate, Query], Found | None]


@dataclass(frozen=True)
class Search:
    """How one resource type is searched (see the module docstring)."""

    resource_type: str
    params: Mapping[str, Param]
    fetch: Fetch | None = None
    read: Read | None = None
    source: Source | None = None
    subjects: tuple[str, ...] = ("patient", "subject")  # reference params naming the patient
    includes: tuple[str, ...] = ()  # reference params `_include` follows
    max_count: int = MAX_COUNT
    default_count: int = 20
    reverse_chaining: bool = False  # `_has` served (for the worklist of one's care-team patients)

    def declared(self) -> dict[str, str]:
        """name -> type, as the CapabilityStatement lists them."""
        common = {"_id": "token", "_lastUpdated": "date"}
        if self.reverse_chaining:
            common["_has"] = "special"
        return {**{n: p.type for n, p in self.params.items()}, **common}

    def param(self, name: str) -> Param | None:
        if name == "_id":
            return Param("token", ("id",))
        if name == "_lastUpdated":
            return Param("date", ("meta.lastUpdated",))
        return self.params.get(name)

    def include_values(self) -> list[str]:
        return [f"{self.resource_type}:{name}" for name in self.includes]


_SEARCHES: dict[str, Search] = {}


def install(searches: Iterable[Search]) -> None:
    """The installed types' searches (carnet.fhir.core.registry.install): what `_include`,
    `_revinclude` and chains reach, without importing any resource module."""
    _SEARCHES.clear()
    _SEARCHES.update({s.resource_type: s for s in searches})


def revinclude_values(resource_type: str) -> list[str]:
    """`T:param` of every installed type whose `_include` reaches this type."""
    return [
        f"{s.resource_type}:{name}"
        for s in _SEARCHES.values()
        for name in s.includes
        if (s.params[name].target or resource_type) == resource_type
    ]


# == values in a resource ======================================================================
def values_at(resource: Any, path: str) -> list[Any]:
    current: list[Any] = [resource]
    for part in path.split("."):
        nxt: list[Any] = []
        for item in current:
            value = item.get(part) if isinstance(item, dict) else None
            if isinstance(value, list):
                nxt.extend(v for v in value if v is not None)
            elif value is not None:
                nxt.append(value)
        current = nxt
    return current


def param_values(resource: Resource, param: Param) -> list[Any]:
    return [v for path in param.paths for v in values_at(resource, path)]


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


# -- token
def _codes(value: Any) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a code, Coding, CodeableConcept, Identifier or boolean."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str | int):
        return [(None, str(value))]
    if isinstance(value, dict):
        if "coding" in value:
            return [p for coding in value.get("coding") or [] for p in _codes(coding)]
        code = value.get("code", value.get("value"))
        if code is not None:
            return [(value.get("system"), str(code))]
    return []


def _token_matches(found: list[Any], wanted: str) -> bool:
    pairs = [p for v in found for p in _codes(v)]
    if "|" not in wanted:
        return any(code == wanted for _s, code in pairs)
    system, _, code = wanted.partition("|")
    if not system:  # `|code`: a code without a system
        return any(s is None and c == code for s, c in pairs)
    if not code:  # `system|`: any code of the system
        return any(s == system for s, _c in pairs)
    return any(s == system and c == code for s, c in pairs)


# -- string
_STRING_PARTS: tuple[str, ...] = ("family", "given", "text", "prefix", "suffix", "line", "city")
_STRING_PARTS += ("district", "state", "postalCode", "country", "display", "value")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for part in _STRING_PARTS for v in values_at(value, part) for s in _strings(v)]
    return []


def _string_matches(found: list[Any], wanted: str, modifier: str | None) -> bool:
    texts = [s for v in found for s in _strings(v)]
    if modifier == "exact":
        return wanted in texts
    folded = _fold(wanted)
    if modifier == "contains":
        return any(folded in _fold(t) for t in texts)
    return any(_fold(t).startswith(folded) for t in texts)


# -- reference
def _reference_matches(found: list[Any], wanted: str, target: str | None) -> bool:
    parts = wanted.rstrip("/").split("/")
    want_type = parts[-2] if len(parts) >= 2 else target
    want_id = parts[-1]
    for value in found:
        ref = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(ref, str):
            continue
        ref_parts = ref.split("/")
        if len(ref_parts) >= 2 and ref_parts[-1] == want_id and want_type in (None, ref_parts[-2]):
            return True
    return False


def references_in(resource: Resource, param: Param) -> list[tuple[str, str]]:
    """(type, id) of the references a parameter holds."""
    out = []
    for value in param_values(resource, param):
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and "/" in ref and not ref.startswith("#"):
            kind, ident = ref.split("/")[-2:]
            out.append((kind, ident))
    return out


# -- date
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)


def date_range(text: str, what: str = "date") -> tuple[dt.datetime, dt.datetime]:
    """A FHIR date, dateTime or instant as the range [low, high) its precision covers."""
    raw = text.strip().replace("Z", "+00:00")
    try:
        if "T" not in raw:
            parts = [int(p) for p in raw.split("-")]
            if len(parts) == 1 and len(raw) == 4:
                low = dt.datetime(parts[0], 1, 1, tzinfo=dt.UTC)
                return low, low.replace(year=parts[0] + 1)
            if len(parts) == 2:
                low = dt.datetime(parts[0], parts[1], 1, tzinfo=dt.UTC)
                high = (
                    low.replace(year=parts[0] + 1, month=1)
                    if parts[1] == 12
                    else low.replace(month=parts[1] + 1)
                )
                return low, high
            if len(parts) == 3:
                low = dt.datetime(parts[0], parts[1], parts[2], tzinfo=dt.UTC)
                return low, low + dt.timedelta(days=1)
            raise ValueError(raw)
        moment = dt.datetime.fromisoformat(raw)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"{what} must be a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or with a time)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    moment = moment.astimezone(dt.UTC)
    step = (
        dt.timedelta(seconds=1)
        if moment.second or moment.microsecond or raw.count(":") >= 2
        else dt.timedelta(minutes=1)
    )
    return moment, moment + step


def _value_range(value: Any) -> tuple[dt.datetime, dt.datetime] | None:
    try:
        if isinstance(value, dt.datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return moment, moment + dt.timedelta(seconds=1)
        if isinstance(value, str):
            return date_range(value)
        if isinstance(value, dict) and ("start" in value or "end" in value):
            low = date_range(value["start"])[0] if value.get("start") else _MIN
            high = date_range(value["end"])[1] if value.get("end") else _MAX
            return low, high
    except InvalidInput:
        return None
    return None


def split_prefix(raw: str) -> tuple[str, str]:
    return (raw[:2], raw[2:]) if raw[:2] in _PREFIXES and raw[2:3].isdigit() else ("eq", raw)


def _date_matches(found: list[Any], wanted: str, now: dt.datetime) -> bool:
    prefix, text = split_prefix(wanted)
    low, high = date_range(text)
    for value in found:
        span = _value_range(value)
        if span is None:
            continue
        t_low, t_high = span
        inside = low <= t_low and t_high <= high
        if prefix == "ap":
            margin = max(abs(now - low) * 0.1, dt.timedelta(days=1))
            hit = t_low < high + margin and t_high > low - margin
        else:
            hit = {
                "eq": inside,
                "ne": not inside,
                "gt": t_high > high,
                "lt": t_low < low,
                "ge": t_high > high or inside,
                "le": t_low < low or inside,
                "sa": t_low >= high,
                "eb": t_high <= low,
            }[prefix]
        if hit:
            return True
    return False


def date_matches(value: dt.datetime | None, criteria: list[str]) -> bool:
    """Whether an instant meets every date criterion (each with an optional prefix)."""
    if value is None:
        return False
    now = dt.datetime.now(dt.UTC)
    return all(_date_matches([value], c, now) for c in criteria)


def matches(resource: Resource, criterion: Criterion, now: dt.datetime) -> bool:
    found = param_values(resource, criterion.param)
    if criterion.modifier == "missing":
        return all((v == "true") == (not found) for v in criterion.values)
    if criterion.modifier == "not":
        return not any(_token_matches(found, v) for v in criterion.values)
    kind = criterion.param.type
    for wanted in criterion.values:
        if kind == "token" and _token_matches(found, wanted):
            return True
        if kind == "string" and _string_matches(found, wanted, criterion.modifier):
            return True
        if kind == "reference" and _reference_matches(
            found, wanted, criterion.modifier or criterion.param.target
        ):
            return True
        if kind == "date" and _date_matches(found, wanted, now):
            return True
    return False


# == parsing ===================================================================================
_CONTROL = frozenset({"_format", "_pretty"})
_RESULT = frozenset(
    {"_count", "_page", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude"}
)
_MODIFIERS = {
    "token": {None, "missing", "not"},
    "date": {None, "missing"},
    "string": {None, "missing", "exact", "contains"},
    "reference": {None, "missing"},
}


def tokens(raw: str | None) -> list[str] | None:
    """A token search value (`a,b`, each `system|code` or `code`) as its codes."""
    if raw is None:
        return None
    return [c.rpartition("|")[2] for c in raw.split(",")]


def strict(request: Request) -> bool:
    """`Prefer: handling=strict`: an unknown parameter is an error, not ignored (R4 §3.1.1.4)."""
    prefer = request.headers.get("prefer", "")
    return any(p.strip().replace(" ", "") == "handling=strict" for p in prefer.split(";") + prefer.split(","))


def _bounded(raw: str, name: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return int(raw)


def parse(request: Request, spec: Search, items: Sequence[tuple[str, str]] | None = None) -> Query:
    """The request's parameters as a Query; what is not served is refused under
    `Prefer: handling=strict`, and otherwise left out (and out of the self link)."""
    is_strict = strict(request)
    query = Query(spec.resource_type, count=spec.default_count)

    def skip(message: str) -> None:
        if is_strict:
            raise Unsupported(message)

    for key, value in items if items is not None else request.query_params.multi_items():
        if key in _CONTROL:
            continue
        if key in _RESULT:
            if _result_param(query, spec, key, value, skip):
                query.used.append((key, value))
            continue
        if key.startswith("_has:") and spec.reverse_chaining:
            if _reverse_chain(query, spec, key, value, skip):
                query.used.append((key, value))
            continue
        if key.startswith("_has:") or (key.startswith("_") and spec.param(key.partition(":")[0]) is None):
            skip(f"unsupported search parameter: {key[:60]}")
            continue
        base, dot, chained = key.partition(".")
        name, _, modifier = base.partition(":")
        param = spec.param(name)
        if param is None:
            skip(f"unsupported search parameter for {spec.resource_type}: {name[:60]}")
            continue
        if dot:
            if param.type != "reference" or name not in spec.subjects or modifier not in ("", "Patient"):
                skip(f"chained search is served on {', '.join(spec.subjects)} (a Patient) only: {key[:60]}")
                continue
            patient_spec = _SEARCHES.get("Patient")
            if patient_spec is None:
                skip("chained search needs the Patient search")
                continue
            sub = parse(request, patient_spec, [(chained, value)])
            if not sub.criteria:
                continue  # lenient: the chained parameter was left out
            query.chains.setdefault(name, []).extend(sub.criteria)
            query.used.append((key, value))
            continue
        mod: str | None = modifier or None
        if param.type == "reference" and mod is not None and mod[:1].isupper():
            if param.target not in (None, mod):
                skip(f"{name} refers to a {param.target}: {key[:60]}")
                continue
        elif mod not in _MODIFIERS.get(param.type, {None}):
            skip(f"modifier :{mod[:20] if mod else ''} is not supported on {name}")
            continue
        if mod == "missing" and value not in ("true", "false"):
            raise InvalidInput(f"{name}:missing takes true or false")
        values = tuple(v for v in value.split(",") if v) if mod != "missing" else (value,)
        if not values:
            continue
        if param.type == "date":
            for v in values:
                date_range(split_prefix(v)[1], name)
        query.criteria.append(Criterion(name, param, mod, values))
        query.used.append((key, value))
    return query


def _reverse_chain(query: Query, spec: Search, key: str, value: str, skip: Callable[[str], None]) -> bool:
    parts = key.split(":")
    other = _SEARCHES.get(parts[1]) if len(parts) == 4 else None
    if other is None:
        skip(f"{key[:60]} is not supported: _has:Type:reference:parameter")
        return False
    ref, name = other.param(parts[2]), other.param(parts[3])
    if ref is None or ref.type != "reference" or (ref.target or spec.resource_type) != spec.resource_type:
        skip(f"{key[:60]}: {parts[1]}.{parts[2]} does not refer to a {spec.resource_type}")
        return False
    if name is None or name.type == "date":
        skip(f"{key[:60]}: {parts[1]} is not searched by {parts[3][:40]} here")
        return False
    query.has.append((parts[1], parts[2], parts[3], value))
    return True


def _result_param(query: Query, spec: Search, key: str, value: str, skip: Callable[[str], None]) -> bool:
    if key == "_count":
        query.count = _bounded(value, "_count", 0, spec.max_count)
    elif key == "_page":
        query.page = _bounded(value, "_page", 1, 1000)
    elif key == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise InvalidInput("_total is none, estimate or accurate")
        query.total = value
    elif key == "_summary":
        if value not in ("true", "false", "count", "data", "text"):
            raise InvalidInput("_summary is true, false, count, data or text")
        query.summary = None if value == "false" else value
    elif key == "_elements":
        query.elements = tuple(e.strip() for e in value.split(",") if e.strip())
    elif key == "_sort":
        for item in (s.strip() for s in value.split(",") if s.strip()):
            name = item.removeprefix("-")
            if spec.param(name) is None:
                skip(f"cannot sort {spec.resource_type} by {name[:40]}")
                return False
            query.sort.append((name, item.startswith("-")))
    elif key in ("_include", "_revinclude"):
        parts = value.split(":")
        if len(parts) not in (2, 3):
            skip(f"{key}={value[:60]} is not supported: name Type:parameter (or Type:parameter:TargetType)")
            return False
        kind, name, target = parts[0], parts[1], parts[2] if len(parts) == 3 else None
        allowed = spec.include_values() if key == "_include" else revinclude_values(spec.resource_type)
        if f"{kind}:{name}" not in allowed:
            skip(f"{key}={value[:60]} is not supported (served: {', '.join(allowed) or 'none'})")
            return False
        (query.include if key == "_include" else query.revinclude).append((kind, name, target))
    return True


# == the answer ================================================================================
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_INCLUDE_LIMIT = 100  # resources an answer adds by _include/_revinclude


def _fields_of(resource_type: str) -> dict[str, dict[str, Any]]:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return {}
    return {f.alias or n: dict(f.json_schema_extra or {}) for n, f in model.model_fields.items()}  # type: ignore[arg-type]


def subset(resource: Resource, summary: str | None, elements: tuple[str, ...] | None) -> Resource:
    """`_summary` (true, text, data) and `_elements`, marked SUBSETTED as R4 asks."""
    if summary in (None, "count") and elements is None:
        return resource
    if summary == "data":
        kept = {k: v for k, v in resource.items() if k != "text"}
    else:
        info = _fields_of(str(resource.get("resourceType")))

        def wanted(key: str) -> bool:
            extra = info.get(key.rstrip("_"), {})
            if key in ("resourceType", "id", "meta") or extra.get("element_required"):
                return True
            if summary == "true":
                return bool(extra.get("summary_element_property")) or (
                    key.startswith("value") and "one_of_many" in extra
                )
            if summary == "text":
                return key == "text"
            return elements is not None and key in elements

        kept = {k: v for k, v in resource.items() if wanted(k)}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), _SUBSETTED]
    kept["meta"] = meta
    return kept


def _sort_key(resource: Resource, spec: Search, name: str) -> tuple[int, Any]:
    param = spec.param(name)
    assert param is not None
    found = param_values(resource, param)
    if not found:
        return (1, "")
    first = found[0]
    if param.type == "date":
        span = _value_range(first)
        return (0, span[0].isoformat()) if span else (1, "")
    if param.type == "token":
        codes = _codes(first)
        return (0, codes[0][1]) if codes else (1, "")
    if param.type == "reference" and isinstance(first, dict):
        return (0, str(first.get("reference") or ""))
    strings = _strings(first)
    return (0, _fold(strings[0])) if strings else (1, "")


def sort(resources: list[Resource], spec: Search, keys: Sequence[tuple[str, bool]]) -> list[Resource]:
    """Stable: the gate's order breaks ties; missing values last either way."""
    out = list(resources)
    for name, descending in reversed(keys):
        present = [r for r in out if _sort_key(r, spec, name)[0] == 0]
        absent = [r for r in out if _sort_key(r, spec, name)[0] == 1]
        present.sort(key=lambda r: _sort_key(r, spec, name)[1], reverse=descending)
        out = present + absent
    return out


def _patients(gate: Gate, spec: Search, query: Query) -> list[str] | None:
    """The patients a search is about, if it names them or chains to the patient search."""
    named = [c for c in query.named(*spec.subjects) if c.modifier in (None, "Patient")]
    patients: list[str] | None = None
    for criterion in named:
        ids = [reference_id(v, "Patient") or "" for v in criterion.values]
        patients = ids if patients is None else [p for p in patients if p in ids]
    for name, chained in query.chains.items():
        patient_spec = _SEARCHES["Patient"]
        assert patient_spec.source is not None
        sub = Query("Patient", criteria=chained, count=SEARCH_PATIENTS)
        found = patient_spec.source(gate, sub)
        assert found is not None
        if found.has_more:
            raise InvalidInput(
                f"{name}: the chained patient search finds more patients than one answer holds: refine it"
            )
        ids = [r["id"] for r in found.resources if _keep(r, patient_spec, sub, found)]
        patients = ids if patients is None else [p for p in patients if p in ids]
    if patients is not None and len(set(patients)) > SEARCH_PATIENTS:
        raise InvalidInput(f"a search names at most {SEARCH_PATIENTS} patients")
    return None if patients is None else list(dict.fromkeys(patients))


SEARCH_PATIENTS = 20  # the patient search's own bound (carnet.access.policy.SEARCH_MAX_COUNT)


def _keep(resource: Resource, spec: Search, query: Query, found: Found) -> bool:
    now = dt.datetime.now(dt.UTC)
    return all(
        matches(resource, c, now)
        for c in query.criteria
        if c.name not in found.consumed or c.modifier == "exact"
    )


def collect(gate: Gate, spec: Search, query: Query) -> Found:
    """The matches, read through the gate: by patient, by `_id`, or from the type's source."""
    patients = _patients(gate, spec, query)
    if patients is None and query.has:
        return _reverse_chained(gate, spec, query)
    if patients is None and spec.source is not None:
        found = spec.source(gate, query)
        if found is not None:
            return found
    ids = query.named("_id")
    if patients is None and ids and spec.read is not None and spec.resource_type != "Patient":
        resources = []
        for criterion in ids:
            for rid in criterion.values[:SEARCH_PATIENTS]:
                try:
                    resources.append(spec.read(gate, rid))
                except NotFound:
                    continue  # a forbidden resource is a missing one
        return Found(resources)
    if patients is None or spec.fetch is None:
        raise InvalidInput(
            f"a {spec.resource_type} search needs {'= or '.join(spec.subjects[:1])}=Patient/<id>"
            " (or a chained patient search such as patient.identifier=): there is no browsing across patients"
        )
    resources = [r for pid in patients for r in spec.fetch(gate, pid)]
    return Found(resources)


def _reverse_chained(gate: Gate, spec: Search, query: Query) -> Found:
    """`_has`: the other type's search (its own rules: a worklist, a patient's section), then
    each resource it points to read through the gate, one page at a time."""
    if spec.read is None:
        raise Unsupported(f"_has is not served on {spec.resource_type}")
    wanted: list[str] | None = None
    for kind, ref, name, value in query.has:
        other = _SEARCHES[kind]
        param, ref_param = other.param(name), other.param(ref)
        assert param is not None and ref_param is not None
        sub = Query(kind, criteria=[Criterion(name, param, None, tuple(v for v in value.split(",") if v))])
        found = collect(gate, other, sub)
        ids = [
            ident
            for r in found.resources
            if _keep(r, other, sub, found)
            for ref_type, ident in references_in(r, ref_param)
            if ref_type == spec.resource_type
        ]
        wanted = ids if wanted is None else [i for i in wanted if i in ids]
    unique = list(dict.fromkeys(wanted or []))
    count = max(query.count, 1)
    start = (query.page - 1) * count
    resources = []
    for ident in unique[start : start + count]:
        try:
            resources.append(spec.read(gate, ident))
        except NotFound:
            continue  # one the actor may not see is left out, as a missing one is
    return Found(resources, paged=True, has_more=len(unique) > start + count)


def _include(gate: Gate, spec: Search, page: list[Resource], query: Query) -> list[Resource]:
    """`_include` and `_revinclude`: each resource read through the gate (authorized, audited,
    counted like a read); one the actor may not see is left out, as a missing one is."""
    added: dict[tuple[str, str], Resource] = {}
    shown = {(r["resourceType"], r["id"]) for r in page}

    def add(resource: Resource) -> None:
        key = (resource["resourceType"], resource["id"])
        if key not in shown and key not in added and len(added) < _INCLUDE_LIMIT:
            added[key] = resource

    for _kind, name, target in query.include:
        param = spec.param(name)
        assert param is not None
        for resource in page:
            for ref_type, ref_id in references_in(resource, param):
                other = _SEARCHES.get(ref_type)
                if other is None or other.read is None or (target and ref_type != target):
                    continue
                if (ref_type, ref_id) in shown or (ref_type, ref_id) in added:
                    continue
                try:
                    add(other.read(gate, ref_id))
                except NotFound:
                    continue
    sections: dict[tuple[str, str], Sequence[Resource]] = {}
    for kind, name, _target in query.revinclude:
        other = _SEARCHES[kind]
        param = other.param(name)
        assert param is not None and other.fetch is not None
        for resource in page:
            patient = _patient_of(resource, spec)
            if patient is None:
                continue
            if (kind, patient) not in sections:
                try:
                    sections[(kind, patient)] = other.fetch(gate, patient)
                except NotFound:
                    sections[(kind, patient)] = []
            here = f"{resource['resourceType']}/{resource['id']}"
            for candidate in sections[(kind, patient)]:
                if _reference_matches(param_values(candidate, param), here, None):
                    add(candidate)
    return list(added.values())


def _patient_of(resource: Resource, spec: Search) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource["id"])
    for name in spec.subjects:
        param = spec.param(name)
        for kind, ident in references_in(resource, param) if param else []:
            if kind == "Patient":
                return ident
    return None


def respond(request: Request, spec: Search) -> Response:
    """`GET [type]?...`: the whole search, answered as a searchset Bundle."""
    gate = gate_for(request, spec.resource_type, "search")
    query = parse(request, spec)
    found = collect(gate, spec, query)
    matched = (
        [r for r in found.resources if _keep(r, spec, query, found)]
        if query.criteria
        else list(found.resources)
    )
    matched = sort(matched, spec, query.sort)
    count_only = query.summary == "count" or query.count == 0
    if found.paged:
        page_items, has_more, total = matched, found.has_more, None if found.has_more else len(matched)
        if query.page > 1 and total is not None:
            total = None  # the gate pages: only the last page knows what came before
    else:
        start = (query.page - 1) * max(query.count, 1)
        page_items = [] if count_only else matched[start : start + query.count]
        has_more = not count_only and len(matched) > start + query.count
        total = len(matched)
    if count_only:
        page_items = []
    included = _include(gate, spec, page_items, query) if page_items else []
    return searchset_bundle(
        request,
        spec.resource_type,
        [subset(r, query.summary, query.elements) for r in page_items],
        included=[subset(r, query.summary, None) for r in included],
        page=query.page,
        has_more=has_more,
        total=None if query.total == "none" else total,
        used=query.used,
    )


def searchset_bundle(
    request: Request,
    resource_type: str,
    resources: Sequence[Resource],
    *,
    page: int,
    has_more: bool,
    total: int | None,
    used: Sequence[tuple[str, str]],
    included: Sequence[Resource] = (),
) -> Response:
    """The searchset: matches, then included resources; self/next/previous links that repeat
    the parameters used (and only them), so paging is stable."""
    base = base_url(request)
    params = [(k, v) for k, v in used if k != "_page"]

    def link(relation: str, number: int) -> dict[str, str]:
        query = urlencode([*params, ("_page", str(number))] if number > 1 or relation != "self" else params)
        return {"relation": relation, "url": f"{base}/{resource_type}" + (f"?{query}" if query else "")}

    links = [link("self", page)]
    if has_more:
        links.append(link("next", page + 1))
    if page > 1:
        links.append(link("previous", page - 1))
    entries = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
        for mode, group in (("match", resources), ("include", included))
        for r in group
    ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return fhir_response(bundle)


def patient_of(request: Request, allowed: set[str], subject: str = "patient") -> str:
    """The one patient a search is about; unknown parameters are refused (fail closed)."""
    params = dict(request.query_params)
    unknown = sorted(set(params) - allowed - {"_count", "_page", "_format", subject, "subject"})
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    value = params.get(subject) or params.get("subject")
    patient = reference_id(value, "Patient")
    if patient is None:
        raise InvalidInput(f"a search needs {subject}=Patient/<id>: there is no browsing across patients")
    return patient


def day_span(criteria: Sequence[Criterion], today: dt.date, max_days: int) -> list[dt.date]:
    """The days a worklist's date criteria cover (today when none), at most `max_days`; an
    open range is refused (a worklist is bounded)."""
    low, high = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC), None
    given = False
    for criterion in criteria:
        if len(criterion.values) != 1 or criterion.modifier is not None:
            raise InvalidInput("a worklist's date takes one value per criterion")
        prefix, text = split_prefix(criterion.values[0])
        start, end = date_range(text, "date")
        if prefix == "eq":
            low, high, given = start, end, True
        elif prefix in ("ge", "gt", "sa"):
            low, given = (end if prefix != "ge" else start), True
        elif prefix in ("le", "lt", "eb"):
            high = start if prefix != "le" else end
        else:
            raise Unsupported(f"a worklist's date takes eq, ge, gt, sa, le, lt or eb, not {prefix}")
    if high is None:
        if given:
            raise InvalidInput(f"a worklist covers at most {max_days} days: give an end (date=le...)")
        high = low + dt.timedelta(days=1)
    first, last = low.date(), (high - dt.timedelta(microseconds=1)).date()
    if last < first:
        return []
    if (last - first).days >= max_days:
        raise InvalidInput(f"a worklist covers at most {max_days} days")
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def chart_section(operation: str, to_fhir: Callable[[dict[str, Any]], Resource]) -> Fetch:
    """A `fetch`: the gate's `operation(patient_id=...)` (one patient's section) in FHIR."""

    def fetch(gate: Gate, patient_id: str) -> list[Resource]:
        return [to_fhir(v.model_dump()) for v in getattr(gate, operation)(patient_id=patient_id)]

    return fetch


def one_record(operation: str, argument: str, to_fhir: Callable[[dict[str, Any]], Resource]) -> Read:
    """A `read`: the gate's `operation(<argument>=id)` in FHIR."""

    def read(gate: Gate, resource_id: str) -> Resource:
        return to_fhir(getattr(gate, operation)(**{argument: resource_id}).model_dump())

    return read
