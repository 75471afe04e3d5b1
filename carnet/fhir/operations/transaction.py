"""POST /fhir: transaction Bundles (all or nothing, one gate transaction, `urn:uuid:`
references between entries resolved) and batch Bundles (each entry on its own, each
answered with its status or its OperationOutcome).

Entries: POST (create), PUT `Type/id` (update, with `request.ifMatch` or `meta.versionId`),
DELETE `Type/id` (the retained status change of that type: a Patient becomes inactive, an
Appointment or an Invoice is cancelled, a Consent withdrawn, a stay, an Observation, a
DiagnosticReport or a Condition marked entered-in-error) and, in a batch only, GET (any
read or search the API serves, run as its own request of the same actor: authorized and
audited the same).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole

from carnet.fhir.core import registry
from carnet.fhir.core.api import (
    FhirBody,
    base_url,
    etag,
    fhir_response,
    gate_for,
    parse_version,
    type_name,
    validated,
)
from carnet.fhir.core.outcome import operation_outcome, status_for
from carnet.fhir.core.registry import FhirModule, Mapper, Writes, serve_get
from carnet.kernel.errors import CarnetError, InvalidInput
from carnet.phi.gate import TRANSACTION_LIMIT, AllergyWarning, Gate
from carnet.phi.schemas import InvoiceView

router = APIRouter(prefix="/fhir", tags=["fhir"])


@dataclass
class Entry:
    number: int
    method: str
    full_url: str | None
    resource_type: str
    resource: dict[str, Any] | None
    url: str
    resource_id: str | None = None
    if_match: str | None = None

    @property
    def action(self) -> str:
        return {"POST": "create", "PUT": "update", "DELETE": "delete", "GET": "read"}[self.method]


def _writes(entry: Entry) -> Writes:
    """What the entry's resource module lets a Bundle do with its type (checked by _entry)."""
    found = registry.writes(entry.resource_type)
    assert found is not None
    return found


def _creates(resource_type: str) -> bool:
    found = registry.writes(resource_type)
    return found is not None and found.create is not None


def _updates(resource_type: str) -> bool:
    found = registry.writes(resource_type)
    return found is not None and found.update is not None


def _deletes(resource_type: str) -> bool:
    found = registry.writes(resource_type)
    return found is not None and found.delete is not None


def _instance_url(number: int, url: str) -> tuple[str, str]:
    parts = url.split("?")[0].strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise InvalidInput(f"entry {number}: the url must be <Type>/<id>")
    return type_name(parts[0]), parts[1]


# Another system's directory entries a transaction Bundle may carry: matched by identifier to
# carnet's directory or kept as received (carnet.org.directory.keep_entries), as the first step of
# the transaction (a Bundle refused keeps none of them).
DIRECTORY = ("Practitioner", "PractitionerRole", "Organization", "Location")


def _entry(number: int, raw: Any, base: str) -> Entry:
    if not isinstance(raw, dict):
        raise InvalidInput(f"entry {number}: not an entry")
    request = raw.get("request") or {}
    method = request.get("method")
    url = str(request.get("url") or "").removeprefix(base).lstrip("/")
    resource = raw.get("resource")
    if method == "GET":
        if not url:
            raise InvalidInput(f"entry {number}: a GET needs its url")
        return Entry(number, method, None, type_name(url.split("/")[0].split("?")[0]), None, url)
    if method not in ("POST", "PUT", "DELETE"):
        raise InvalidInput(f"entry {number}: the method must be POST, PUT, DELETE or GET")
    if method == "DELETE":
        resource_type, rid = _instance_url(number, url)
        if not _deletes(resource_type):
            raise InvalidInput(f"entry {number}: {resource_type} cannot be deleted")
        return Entry(number, method, None, resource_type, None, url, rid, request.get("ifMatch"))
    if not isinstance(resource, dict):
        raise InvalidInput(f"entry {number}: a {method} needs a resource")
    resource_type = type_name(resource.get("resourceType"))
    if method == "POST" and resource_type in DIRECTORY:
        return Entry(number, method, raw.get("fullUrl"), resource_type, resource, url)
    if method == "POST":
        if not _creates(resource_type) or (url or resource_type).split("?")[0] != resource_type:
            raise InvalidInput(f"entry {number}: {resource_type} cannot be created in a Bundle")
        # A POST's ifMatch is the version of what it acts on (a payment: the invoice it pays).
        return Entry(
            number, method, raw.get("fullUrl"), resource_type, resource, url, None, request.get("ifMatch")
        )
    url_type, rid = _instance_url(number, url)
    if not _updates(resource_type) or url_type != resource_type:
        raise InvalidInput(f"entry {number}: {resource_type} cannot be updated in a Bundle")
    if resource.get("id") != rid:
        raise InvalidInput(f"entry {number}: the resource id must match the url")
    return Entry(
        number, method, raw.get("fullUrl"), resource_type, resource, url, rid, request.get("ifMatch")
    )


def _entries(bundle: dict[str, Any], base: str) -> list[Entry]:
    entries = [_entry(number, raw, base) for number, raw in enumerate(bundle.get("entry") or [], start=1)]
    if not 1 <= len(entries) <= TRANSACTION_LIMIT:
        raise InvalidInput(f"a Bundle holds 1 to {TRANSACTION_LIMIT} entries")
    return entries


def _version(entry: Entry, resource: dict[str, Any] | None) -> int | None:
    """The version an update or delete expects: request.ifMatch, else the body's meta.versionId."""
    version = parse_version(entry.if_match)
    if version is None and resource is not None:
        meta = resource.get("meta") or {}
        raw = meta.get("versionId") if isinstance(meta, dict) else None
        version = parse_version(str(raw)) if raw is not None else None
    return version


def resolve(value: Any, created: dict[str, str]) -> Any:
    """Replace references to earlier entries (by `urn:uuid:` fullUrl, or `Type/<id>` as another
    system names its own resources) with their new `Type/id`."""
    if isinstance(value, dict):
        out = {k: resolve(v, created) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in created:
            out["reference"] = created[ref]
        elif isinstance(ref, str) and ref.startswith("urn:uuid:"):
            raise InvalidInput("a reference names an entry that is not created before it")
        return out
    if isinstance(value, list):
        return [resolve(v, created) for v in value]
    return value


def _new_invoice_paid(entry: Entry, created: dict[str, str], fresh: dict[str, int]) -> dict[str, Any] | None:
    """A payment of an Invoice created by an earlier entry of this transaction names it by its
    `urn:uuid:`, which carries no version. The rule: that invoice exists nowhere but in this
    transaction, so no one else can have changed it; it is at version 1 by construction, and
    the payment is pinned to `Invoice/<id>/_history/1`. If an earlier entry of this transaction
    already changed it (a first payment), the reference is ambiguous and refused: pay it again
    in a later request, naming the version read. None when the payment names no such invoice."""
    resource = entry.resource or {}
    details = resource.get("detail")
    if not isinstance(details, list) or len(details) != 1 or not isinstance(details[0], dict):
        return None  # not one detail: payment_input says what is wrong
    request = details[0].get("request")
    if not isinstance(request, dict):
        return None
    reference = request.get("reference")
    if not isinstance(reference, str) or reference not in fresh:
        return None
    if fresh[reference] != 1:
        raise InvalidInput(
            "an invoice created in this transaction is paid once in it (detail.request urn:uuid);"
            " record another payment in a later request, naming the version read"
        )
    if entry.if_match is not None and parse_version(entry.if_match) != 1:
        raise InvalidInput("an invoice created in this transaction is at version 1: ifMatch says otherwise")
    pinned = dict(details[0], request=dict(request, reference=f"{created[reference]}/_history/1"))
    return dict(resource, detail=[pinned])


def _write(
    entry: Entry, gate: Gate, created: dict[str, str], fresh: dict[str, int] | None = None
) -> tuple[str, dict[str, Any]]:
    """An entry's gate operation and arguments (its resource validated after references resolve).
    `fresh`: the invoices created earlier in this transaction (by `urn:uuid:`) and the version
    its earlier entries left each at."""
    hooks = _writes(entry)
    if entry.method == "POST":
        assert hooks.create is not None
        raw = entry.resource
        if entry.resource_type == "PaymentReconciliation":
            raw = _new_invoice_paid(entry, created, fresh or {}) or raw
        resource = validated(hooks.model, resolve(raw, created), entry.resource_type)
        # A POST's ifMatch is the version of what it acts on (a payment: the invoice it pays).
        return hooks.create(resource, gate, entry.if_match)
    if entry.method == "PUT":
        assert hooks.update is not None
        resource = validated(hooks.model, resolve(entry.resource, created), entry.resource_type)
        version = _version(entry, resource)
        if version is None:
            raise InvalidInput(
                "an update needs request.ifMatch (or meta.versionId) with the version you read"
            )
        assert entry.resource_id is not None
        return hooks.update(resource, entry.resource_id, version)
    assert hooks.delete is not None and entry.resource_id is not None
    version = _version(entry, None)
    if version is None:
        raise InvalidInput("a delete in a transaction needs request.ifMatch (the version you read)")
    return hooks.delete(entry.resource_id, version)


def _mapper(entry: Entry) -> Mapper:
    return _writes(entry).to_fhir


def _response_entry(request: Request, entry: Entry, view: Any) -> dict[str, Any]:
    resource = _mapper(entry)(view.model_dump())
    version = resource["meta"]["versionId"]
    status = "201 Created" if entry.method == "POST" else "200 OK"
    return {
        "fullUrl": f"{base_url(request)}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "response": {
            "status": status,
            "location": f"{resource['resourceType']}/{resource['id']}/_history/{version}",
            "etag": etag(int(version)),
            "lastModified": resource["meta"].get("lastUpdated"),
        },
    }


@router.post("")
@router.post("/", include_in_schema=False)  # the base URL with its slash, as clients send it
def post_bundle(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    bundle = validated(Bundle, body, "Bundle")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidInput("POST /fhir takes a transaction or batch Bundle")
    entries = _entries(bundle, base_url(request) + "/")
    writes = [e for e in entries if e.method != "GET"]
    if kind == "transaction" and len(writes) != len(entries):
        raise InvalidInput("a transaction holds writes (POST, PUT, DELETE): send reads in a batch")
    # A token needs the scope of every resource type and action the Bundle writes; each GET
    # is checked as the read or search it is.
    gates = [gate_for(request, t, a) for t, a in sorted({(e.resource_type, e.action) for e in writes})]
    gate = gates[0] if gates else None
    if kind == "transaction":
        assert gate is not None
        return _transaction(request, gate, entries)
    return _batch(request, gate, entries)


def names(entry: Entry) -> list[str]:
    """How other entries may name this one: its fullUrl, and `Type/<id>` (its own id, or the
    tail of an absolute fullUrl)."""
    found = [entry.full_url] if entry.full_url else []
    if entry.full_url and "://" in entry.full_url:
        found.append("/".join(entry.full_url.rstrip("/").split("/")[-2:]))
    rid = (entry.resource or {}).get("id")
    if isinstance(rid, str):
        found.append(f"{entry.resource_type}/{rid}")
    return found


def _rewrite_directory(resource: dict[str, Any], known: dict[str, str]) -> dict[str, Any]:
    """A directory entry's references, between directory entries only; anything else they name
    must already be carnet's."""
    kept: dict[str, Any] = resolve(
        validated(_DIRECTORY_MODELS[resource["resourceType"]], resource, resource["resourceType"]), known
    )
    return kept


def _transaction(request: Request, gate: Gate, entries: list[Entry]) -> Response:
    created: dict[str, str] = {}
    # Another system's directory entries: matched or kept by the transaction's first step.
    directory = [e for e in entries if e.method == "POST" and e.resource_type in DIRECTORY]
    writes = [e for e in entries if e not in directory]
    first = 1 if directory else 0

    def keep(_results: list[Any]) -> dict[str, Any]:
        return {
            "resources": [e.resource or {} for e in directory],
            "rewrite": _rewrite_directory,
            "names": lambda i: names(directory[i]),
        }

    def step(entry: Entry) -> tuple[str, Callable[[list[Any]], dict[str, Any]]]:
        def arguments(results: list[Any]) -> dict[str, Any]:
            # The entries before this one are written by now: record the ids of new ones, and
            # the version each invoice created here is at (a payment returns its invoice).
            if directory:
                for earlier, (reference, _kept) in zip(directory, results[0], strict=True):
                    for name in names(earlier):
                        created[name] = reference
            versions: dict[str, int] = {}
            for earlier, view in zip(writes, results[first:], strict=False):
                if earlier.method == "POST":
                    for name in names(earlier):
                        created[name] = f"{earlier.resource_type}/{view.id}"
                if isinstance(view, InvoiceView):
                    versions[f"Invoice/{view.id}"] = view.version_id or 1
            fresh = {urn: versions[ref] for urn, ref in created.items() if ref in versions}
            return _write(entry, gate, created, fresh)[1]

        # The operation's name is known from the entry alone (its arguments wait for references).
        return _operation(entry), arguments

    steps = ([("keep_directory_entries", keep)] if directory else []) + [step(e) for e in writes]
    try:
        results = gate.run_transaction(steps=steps)
    except AllergyWarning as exc:
        return fhir_response(operation_outcome("business-rule", str(exc)), status=422)
    kept = dict(zip([e.number for e in directory], results[0] if directory else [], strict=True))
    answered = dict(zip([e.number for e in writes], results[first:], strict=True))
    out = []
    for entry in entries:
        if entry.number in kept:
            reference, new = kept[entry.number]
            out.append({"response": {"status": "201 Created" if new else "200 OK", "location": reference}})
        else:
            out.append(_response_entry(request, entry, answered[entry.number]))
    return fhir_response({"resourceType": "Bundle", "type": "transaction-response", "entry": out})


def _operation(entry: Entry) -> str:
    """The gate operation of an entry, before its references are resolved."""
    hooks = _writes(entry)
    if entry.method == "DELETE":
        assert hooks.delete is not None
        return hooks.delete("", 0)[0]
    # A new CareTeam's operation, or a PUT's, may depend on its content (an Appointment is
    # moved or cancelled).
    named = hooks.creates if entry.method == "POST" else hooks.updates
    assert named is not None
    return named if isinstance(named, str) else named(entry.resource or {})


def _batch(request: Request, gate: Gate | None, entries: list[Entry]) -> Response:
    """Each entry on its own (its own gate transaction); references to other entries of a
    batch are not resolved (that is what a transaction is for)."""
    out = []
    for entry in entries:
        try:
            if entry.method == "GET":
                out.append(_get(request, entry))
                continue
            assert gate is not None
            if entry.resource_type in DIRECTORY:
                raise InvalidInput("another system's directory entries are taken in a transaction Bundle")
            if entry.method == "DELETE" and _version(entry, None) is None:
                # As DELETE Type/id does: the current version, read (and audited) first.
                assert entry.resource_id is not None
                current_of = _writes(entry).current
                assert current_of is not None
                current = current_of(gate, entry.resource_id)
                entry.if_match = etag(current.version_id)
            name, arguments = _write(entry, gate, {})
            view = getattr(gate, name)(**arguments)
            out.append(_response_entry(request, entry, view))
        except CarnetError as exc:
            status, code = (422, "business-rule") if isinstance(exc, AllergyWarning) else status_for(exc)
            outcome = operation_outcome(code, f"entry {entry.number}: {exc}")
            out.append({"response": {"status": str(status), "outcome": outcome}})
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": out})


def _get(request: Request, entry: Entry) -> dict[str, Any]:
    """A batch GET: the route that serves `GET /fhir/<url>`, called as a request of the same
    actor (it authorizes, audits and accounts as it always does)."""
    path, _, query = entry.url.partition("?")
    path = "/fhir/" + path.strip("/")
    if "$" in path and not path.endswith("/$everything"):
        raise InvalidInput("a batch GET reads or searches resources (no operations but $everything)")
    response = serve_get(request, path, query)
    resource = json.loads(bytes(response.body))
    answer: dict[str, Any] = {"resource": resource, "response": {"status": f"{response.status_code} OK"}}
    if "etag" in response.headers:
        answer["response"]["etag"] = response.headers["etag"]
    return answer


_DIRECTORY_MODELS: dict[str, Any] = {
    "Practitioner": Practitioner,
    "PractitionerRole": PractitionerRole,
    "Organization": Organization,
    "Location": Location,
}

MODULE = FhirModule(router=router, system_interactions=("transaction", "batch"))
