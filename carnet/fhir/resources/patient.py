"""FHIR Patient: read, vread, _history, search, create (If-None-Exist), update (If-Match),
delete (kept, marked inactive), $merge and $unmerge, all through the gate. (Patient/$everything
spans every chart section: carnet.fhir.operations.everything.)"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient
from starlette.routing import Match, Route
from starlette.types import Scope

from carnet.access.policy import SEARCH_MAX_COUNT
from carnet.fhir.core import handoff, shapes
from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    parse_version,
    read_response,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import EXT, as_received, clean, ref, schema_input, when
from carnet.fhir.core.model_check import conforms
from carnet.fhir.core.outcome import Unsupported
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import (
    Found,
    Query,
    Search,
    date,
    one_record,
    respond,
    split_prefix,
    string,
    token,
)
from carnet.identity.dependencies import cookie_read, runtime_of
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.phi.gate import Gate, read_patient_of_session
from carnet.phi.schemas import PatientChanges, PatientInput, PatientPage
from carnet.runtime import Runtime

router = APIRouter(prefix="/fhir/Patient", tags=["fhir"])
PATIENT = "Patient"
SEARCH_PARAMS = {
    "identifier": "token",
    "family": "string",
    "given": "string",
    "name": "string",
    "birthdate": "date",
    "gender": "token",
}
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"  # INS-NIR, the French national health identifier
OPPOSES_OTHER_FACILITIES = EXT + "opposes-other-facilities"
_CONTROL = {"_count", "_page", "_format"}

# FHIR R5's Patient $merge, offered on R4: references (each at the version read) and a reason.
MERGE = "http://hl7.org/fhir/OperationDefinition/Patient-merge"
# carnet's reversal of a merge done in error (no standard operation exists), same parameters.
UNMERGE = "https://carnet.example.org/fhir/OperationDefinition/Patient-unmerge"
MERGE_PARAMETERS = {"source-patient", "target-patient", "reason"}
MERGE_UNSUPPORTED = {"source-patient-identifier", "target-patient-identifier", "result-patient", "preview"}


# == mapping ===================================================================================
def patient_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    """The Patient as received (for a reader of every field: carnet's managed elements follow
    its changes, see carnet/patients/received.py), else rendered from carnet's columns.

    Rendered element by element, in the resource's order, each left out where `clean` would
    leave it out (None, [] or {}): the same dict as `clean` over the whole resource, without a
    call per element (tests/fhir/test_patient_mapping.py keeps the previous mapper as the
    reference)."""
    (
        received,
        version_id,
        updated_at,
        opposes,
        ins,
        active,
        family,
        given,
        phone,
        email,
        gender,
        birth_date,
        a,
        physician,
        facility,
        merged_into,
        replaces,
    ) = map(d.get, _VIEW_FIELDS)  # a call for them all (map's own calls of `get` are C's)
    if received:
        received = as_received(d)
        if received is not None:
            return received if conforms(received) else checked(Patient, received)
    resource: dict[str, Any] = {"resourceType": "Patient"}
    value = d["id"]
    if value not in _EMPTY:
        resource["id"] = value
    resource["meta"] = _meta(version_id, updated_at)
    if opposes is not None:
        resource["extension"] = [{"url": OPPOSES_OTHER_FACILITIES, "valueBoolean": bool(opposes)}]
    if ins:
        resource["identifier"] = [{"system": INS_SYSTEM, "value": ins}]
    if active not in _EMPTY:
        resource["active"] = active
    if family or given:
        name: dict[str, Any] = {"use": "official"}
        if family not in _EMPTY:
            name["family"] = family
        if given:
            name["given"] = [given]
        resource["name"] = [name]
    if phone or email:
        telecom = []
        if phone:
            telecom.append({"system": "phone", "value": phone})
        if email:
            telecom.append({"system": "email", "value": email})
        resource["telecom"] = telecom
    if gender not in _EMPTY:
        resource["gender"] = gender
    if birth_date not in _EMPTY:
        resource["birthDate"] = birth_date
    if isinstance(a, dict):
        resource["address"] = [
            clean(
                {
                    "line": [a["line"]] if a.get("line") else None,
                    "city": a.get("city"),
                    "postalCode": a.get("postalCode") or a.get("postal_code"),
                    "country": a.get("country"),
                }
            )
        ]
    if physician:
        resource["generalPractitioner"] = [{"reference": f"Practitioner/{physician}"}]
    if facility:
        resource["managingOrganization"] = {"reference": f"Organization/{facility}"}
    if merged_into or replaces:
        links = _patient_links(d)
        if links:
            resource["link"] = links
    # The mapper's own shape is valid R4 at a fraction of the R4B model's cost; else the model decides.
    return resource if shapes.patient_ok(resource) else checked(Patient, resource)


_EMPTY: tuple[Any, ...] = (None, [], {})  # what `clean` leaves out
_VIEW_FIELDS = (
    "received",
    "version_id",
    "updated_at",
    "opposes_other_facilities",
    "ins",
    "active",
    "family",
    "given",
    "phone",
    "email",
    "gender",
    "birth_date",
    "address",
    "designated_physician_id",
    "facility_id",
    "merged_into_id",
    "replaces",
)


def _meta(version: Any, updated: Any) -> dict[str, Any]:
    """`meta(d)`, a datetime's instant without a call."""
    out: dict[str, Any] = {"versionId": str(version or 1)}
    if updated is not None:
        if type(updated) is dt.datetime:
            out["lastUpdated"] = (
                updated.isoformat()
                if updated.tzinfo is not None
                else updated.replace(tzinfo=dt.UTC).isoformat()
            )
        else:
            out["lastUpdated"] = when(updated)
    return out


def _patient_links(d: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A merged duplicate points to the record kept (replaced-by); the kept one to its duplicates."""
    links = []
    if d.get("merged_into_id"):
        links.append({"other": ref("Patient", d["merged_into_id"]), "type": "replaced-by"})
    links.extend({"other": ref("Patient", other), "type": "replaces"} for other in d.get("replaces") or [])
    return links or None


def _patient_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    names = body.get("name") or []
    if names:
        official = next((n for n in names if n.get("use") == "official"), names[0])
        if official.get("family"):
            fields["family"] = official["family"]
        if official.get("given"):
            fields["given"] = " ".join(official["given"])
    if body.get("birthDate"):
        try:
            fields["birth_date"] = dt.date.fromisoformat(str(body["birthDate"]))
        except ValueError:
            raise InvalidInput("birthDate must be a full date (YYYY-MM-DD)") from None
    if body.get("gender"):
        fields["gender"] = body["gender"]
    for ident in body.get("identifier") or []:
        if ident.get("system") == INS_SYSTEM and ident.get("value"):
            fields["ins"] = ident["value"]
    for telecom in body.get("telecom") or []:
        if telecom.get("system") in ("phone", "email") and telecom.get("value"):
            fields.setdefault(telecom["system"], telecom["value"])
    addresses = body.get("address") or []
    if addresses:
        a = addresses[0]
        address = {
            "line": ", ".join(a.get("line") or []),
            "city": a.get("city"),
            "postalCode": a.get("postalCode"),
            "country": a.get("country"),
        }
        fields["address"] = {k: v for k, v in address.items() if v}
    gps = body.get("generalPractitioner") or []
    if gps:
        fields["designated_physician_id"] = reference_id(gps[0].get("reference"), "Practitioner")
    for ext in body.get("extension") or []:
        if ext.get("url") == OPPOSES_OTHER_FACILITIES and "valueBoolean" in ext:
            fields["opposes_other_facilities"] = bool(ext["valueBoolean"])
    return fields


def patient_input(body: dict[str, Any], default_facility: str | None) -> PatientInput:
    fields = _patient_fields(body)
    org = body.get("managingOrganization") or {}
    facility = reference_id(org.get("reference"), "Organization") if org else default_facility
    if facility is None:
        raise InvalidInput("managingOrganization is required (the facility that registers the patient)")
    missing = [
        n
        for n, k in (
            ("name.family", "family"),
            ("name.given", "given"),
            ("birthDate", "birth_date"),
            ("gender", "gender"),
        )
        if k not in fields
    ]
    if missing:
        raise InvalidInput("a Patient needs " + ", ".join(missing))
    return schema_input(  # type: ignore[no-any-return]
        PatientInput, dict(fields, facility_id=facility, received=body), "Patient"
    )


def patient_changes(body: dict[str, Any]) -> PatientChanges:
    """What a PUT sets: the fields it carries (the gate cannot blank a field, by design:
    identity data is amended, never erased through the API), and the body, which replaces the
    Patient kept as received."""
    return schema_input(  # type: ignore[no-any-return]
        PatientChanges, dict(_patient_fields(body), received=body), "Patient"
    )


# == routes ====================================================================================
def _search(gate: Gate, params: dict[str, str], *, count: int, page: int) -> PatientPage:
    unknown = sorted(set(params) - set(SEARCH_PARAMS) - _CONTROL)
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    identifier = params.get("identifier")
    if identifier is not None and "|" in identifier:
        system, _, identifier = identifier.partition("|")
        if system and system != INS_SYSTEM:
            raise InvalidInput(f"identifier system must be {INS_SYSTEM}")
    birth = params.get("birthdate")
    birth_date = None
    if birth is not None:
        birth = birth.removeprefix("eq")
        try:
            birth_date = dt.date.fromisoformat(birth)
        except ValueError:
            raise InvalidInput("birthdate must be a full date (YYYY-MM-DD), optionally eq-prefixed") from None
    return gate.search_patients(
        identifier=identifier,
        family=params.get("family") or params.get("name"),
        given=params.get("given"),
        birth_date=birth_date,
        count=count,
        page=page,
    )


def patient_source(gate: Gate, query: Query) -> Found:
    """The Patient search: the gate's rules (an identifier, or family + birthdate, or a name
    among one's own patients), paged by the gate; `_id` is a read."""
    ids = query.named("_id")
    if ids:
        if len(ids) > 1 or len(ids[0].values) != 1:
            raise InvalidInput("_id takes one patient id")
        try:
            return Found([patient_to_fhir(gate.read_patient(patient_id=ids[0].values[0]).model_dump())])
        except NotFound:
            return Found([])
    params: dict[str, str] = {}
    for criterion in query.criteria:
        name = criterion.name
        if name not in _GATE_PARAMS:
            continue
        if criterion.modifier == "contains":
            raise Unsupported(
                f"{name}:contains is not served: names are encrypted and found through keyed indexes"
                " (a whole name, or the start of its words among your own patients)"
            )
        if criterion.modifier == "missing":
            raise Unsupported(f"{name}:missing is not served: it would browse")
        if len(criterion.values) != 1 or name in params:
            raise InvalidInput(f"{name} takes one value")
        value = criterion.values[0]
        if name == "birthdate":
            prefix, value = split_prefix(value)
            if prefix != "eq" or len(value) != 10:
                raise Unsupported("birthdate takes one full date (YYYY-MM-DD, eq): a range would browse")
        if name == "identifier" and value.endswith("|"):
            raise Unsupported("identifier takes a value (system|value or value): a system alone would browse")
        params[name] = value
    count = min(query.count or SEARCH_MAX_COUNT, SEARCH_MAX_COUNT)
    found = _search(gate, params, count=count, page=query.page)
    # exact names are compared again on what the gate decrypted (R4: case and accents count)
    consumed = frozenset(params) - {c.name for c in query.criteria if c.modifier == "exact"}
    return Found(
        [patient_to_fhir(i.model_dump()) for i in found.items],
        paged=True,
        has_more=found.has_more,
        consumed=consumed,
    )


_GATE_PARAMS = frozenset({"identifier", "family", "given", "name", "birthdate"})
SEARCH = Search(
    PATIENT,
    {
        "identifier": token("identifier"),
        "family": string("name.family"),
        "given": string("name.given"),
        "name": string("name"),
        "birthdate": date("birthDate"),
        "gender": token("gender"),
    },
    read=one_record("read_patient", "patient_id", patient_to_fhir),
    source=patient_source,
    subjects=(),
    reverse_chaining=True,
    max_count=SEARCH_MAX_COUNT,
    default_count=SEARCH_MAX_COUNT,
)


@router.get("")
def search_patients(request: Request) -> Response:
    """Search needs an identifier, or family + birthdate, or a name among one's own patients."""
    return respond(request, SEARCH)


@router.post("")
def create_patient(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, PATIENT, "create")
    resource = validated(Patient, body, PATIENT)
    # If-None-Exist (R4), or the search in the query string as some clients send it.
    condition = request.headers.get("if-none-exist") or request.url.query or None
    if condition is not None:
        # Conditional create: the search itself goes through the gate (audited, bounded).
        params = dict(parse_qsl(condition.removeprefix("?"), keep_blank_values=False))
        if not params or set(params) & _CONTROL:
            raise InvalidInput("If-None-Exist must hold search parameters such as identifier=...")
        found = _search(gate, params, count=2, page=1)
        if len(found.items) > 1:
            raise Conflict("If-None-Exist matches more than one patient")
        if found.items:
            return resource_response(request, patient_to_fhir(found.items[0].model_dump()))
    facility = str(gate.actor.facility_id) if gate.actor.facility_id else None
    view = gate.register_patient(data=patient_input(resource, facility))
    return resource_response(request, patient_to_fhir(view.model_dump()), status=201)


def _merge_reference(params: dict[str, dict[str, Any]], name: str) -> tuple[str, int]:
    """A `Patient/<id>/_history/<version>` reference: the record and the version the clerk read."""
    value = (params.get(name) or {}).get("valueReference") or {}
    reference = str(value.get("reference") or "")
    parts = reference.split("/")
    if len(parts) != 4 or parts[0] != PATIENT or parts[2] != "_history" or not parts[3].isdigit():
        raise InvalidInput(
            f"{name} must be a versioned reference Patient/<id>/_history/<version> (the version read)"
        )
    return parts[1], int(parts[3])


def _merge_parameters(body: dict[str, Any]) -> tuple[tuple[str, int], tuple[str, int], str]:
    resource = validated(Parameters, body, "Parameters")
    params: dict[str, dict[str, Any]] = {}
    for parameter in resource.get("parameter") or []:
        name = str(parameter.get("name"))
        if name in MERGE_UNSUPPORTED:
            raise InvalidInput(f"{name} is not supported: name both records by reference")
        if name not in MERGE_PARAMETERS:
            raise InvalidInput(
                f"unknown parameter {name[:40]!r}: expected source-patient, target-patient, reason"
            )
        if name in params:
            raise InvalidInput(f"{name} is given more than once")
        params[name] = parameter
    source = _merge_reference(params, "source-patient")
    target = _merge_reference(params, "target-patient")
    reason = (params.get("reason") or {}).get("valueString")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("reason (valueString) is required: why these two records are one person")
    return source, target, reason


@router.post("/$merge")
def merge_patients(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Merge a duplicate (source-patient) into the record kept (target-patient): the source
    becomes inactive, replaced-by the target, and its records move to the target. Returns the
    target Patient. Each reference names the version read; a changed record answers 412."""
    gate = gate_for(request, PATIENT, "update")
    (source_id, source_version), (target_id, target_version), reason = _merge_parameters(body)
    view = gate.merge_patients(
        source_id=source_id,
        target_id=target_id,
        source_version=source_version,
        target_version=target_version,
        reason=reason,
    )
    return resource_response(request, patient_to_fhir(view.model_dump()))


@router.post("/$unmerge")
def unmerge_patients(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Reverse a merge done in error: source-patient is the merged record, target-patient the
    record it was merged into (each at the version read). Returns the source, active again."""
    gate = gate_for(request, PATIENT, "update")
    (source_id, source_version), (target_id, target_version), reason = _merge_parameters(body)
    view = gate.unmerge_patients(
        source_id=source_id,
        target_id=target_id,
        source_version=source_version,
        target_version=target_version,
        reason=reason,
    )
    return resource_response(request, patient_to_fhir(view.model_dump()))


@router.get("/{patient_id}")
def read_patient(request: Request, patient_id: str) -> Response:
    return _read_patient(request, patient_id, runtime_of(request))


def _read_patient(request: Request, patient_id: str, runtime: Runtime) -> Response:
    # A session cookie's read takes the session's lookup in the gate's first round trip; any
    # case that variant does not take (a bearer token among them) resolves the actor first.
    session = cookie_read(request, runtime)
    view = None
    if session is not None:
        token, context = session
        view = read_patient_of_session(runtime, token=token, context=context, patient_id=patient_id)
    if view is None:
        view = gate_for(request, PATIENT, "read").read_patient(patient_id=patient_id)
    return read_response(request, patient_to_fhir(view.model_dump()))


# A FHIR id (R4 datatypes: [A-Za-z0-9\-\.]{1,64}) as the last segment of a Patient read: no `$`
# or `_`, so no literal path (`Patient/$export`, `Patient/_history`, `Patient/_search`) matches.
_READ_PATH = re.compile(r"/fhir/Patient/[A-Za-z0-9\-.]{1,64}")
_ID_AT = len("/fhir/Patient/")


async def _read_first(request: Request) -> Response:
    # In one of the worker's read threads (carnet.fhir.core.handoff: anyio's hand-off, lighter),
    # as many at once as anyio's limiter lets the other routes run (`request_threads`).
    runtime = runtime_of(request)
    return await handoff.in_thread(
        runtime.settings.request_threads,
        _read_patient,
        request,
        request.scope["path_params"]["patient_id"],
        runtime,
    )


class ReadFirst(Route):
    """The Patient read, matched before every other route of the app and served by Starlette
    itself: FastAPI's router tries each route in turn (36 matches before `Patient/{id}`, 9% of a
    read's CPU) and then solves the route's dependencies, of which `read_patient` has none. It
    answers only a GET of a well-formed id, which no route before it can answer
    (tests/fhir/test_read_route.py), with `read_patient` in a worker thread (its own kind of
    hand-off: carnet.fhir.core.handoff), errors through the app's handlers; anything else goes
    the usual way, to `read_patient` too."""

    def __init__(self) -> None:
        super().__init__(
            router.prefix + "/{patient_id}", _read_first, methods=["GET"], include_in_schema=False
        )

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("root_path")
            or _READ_PATH.fullmatch(scope["path"]) is None
        ):
            return Match.NONE, {}
        # Route.matches' answer for such a path, without its generic steps (the path's last
        # segment is the id; tests/fhir/test_read_route.py compares the two).
        path_params = dict(scope.get("path_params", {}))
        path_params["patient_id"] = scope["path"][_ID_AT:]
        # The route, besides: what the access log and the metrics name (its template).
        return Match.FULL, {"endpoint": self.endpoint, "path_params": path_params, "route": self}


def install_read_first(app: FastAPI) -> None:
    """Mount `ReadFirst` ahead of the routers (call before including them)."""
    app.router.routes.append(ReadFirst())


@router.put("/{patient_id}")
def update_patient(request: Request, patient_id: str, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, PATIENT, "update")
    resource = validated(Patient, body, PATIENT)
    if resource.get("id") != patient_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    changes = patient_changes(resource)
    view = gate.update_patient(patient_id=patient_id, expected_version=version, changes=changes)
    return resource_response(request, patient_to_fhir(view.model_dump()))


@router.delete("/{patient_id}")
def delete_patient(request: Request, patient_id: str) -> Response:
    """A delete keeps the record: it becomes inactive (a new, audited version)."""
    gate = gate_for(request, PATIENT, "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        current = gate.read_patient(patient_id=patient_id).version_id
        version = current or 1
    view = gate.deactivate_patient(patient_id=patient_id, expected_version=version)
    return resource_response(request, patient_to_fhir(view.model_dump()))


@router.get("/{patient_id}/_history")
def patient_history(request: Request, patient_id: str) -> Response:
    return history_response(request, PATIENT, patient_id, patient_to_fhir)


@router.get("/{patient_id}/_history/{version_id}")
def vread_patient(request: Request, patient_id: str, version_id: str) -> Response:
    return vread_response(request, PATIENT, patient_id, version_id, patient_to_fhir)


# == in a Bundle ===============================================================================
def patient_create(r: dict[str, Any], gate: Gate, if_match: str | None) -> tuple[str, dict[str, Any]]:
    facility = str(gate.actor.facility_id) if gate.actor.facility_id else None
    return "register_patient", {"data": patient_input(r, facility)}


def patient_change(r: dict[str, Any], rid: str, version: int) -> tuple[str, dict[str, Any]]:
    return "update_patient", {
        "patient_id": rid,
        "expected_version": version,
        "changes": patient_changes(r),
    }


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            PATIENT,
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            conditional_create=True,
            writes=Writes(
                Patient,
                patient_to_fhir,
                creates="register_patient",
                create=patient_create,
                updates="update_patient",
                update=patient_change,
                delete=lambda rid, v: ("deactivate_patient", {"patient_id": rid, "expected_version": v}),
                current=lambda g, rid: g.read_patient(patient_id=rid),
            ),
        ),
    ),
    operations={"merge": MERGE, "unmerge": UNMERGE},
)
