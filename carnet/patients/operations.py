"""Patient operations (run only by the gate kernel, carnet.phi.kernel): read, search, register,
update, deactivate."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

from carnet.access.permissions import Permission
from carnet.access.policy import (
    PATIENT_ALL,
    SEARCH_MAX_COUNT,
    SEARCH_MAX_PAGE,
    Relationship,
    granting_relationships,
)
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.crypto.blind import IndexKind, name_matches, normalize_name
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import Patient
from carnet.patients.names import name_keys, replace_name_keys
from carnet.patients.received import follow, kept_state
from carnet.patients.rules import check_duplicate
from carnet.patients.search_sql import Kind, StatementShape, search_statement
from carnet.patients.views import (
    PATIENT_ENCRYPTED,
    patient_columns,
    patient_data,
    patient_view,
    with_replaces,
    written_patient,
)
from carnet.phi import care
from carnet.phi.kernel import RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import PatientChanges, PatientInput, PatientPage, PatientView
from carnet.phi.steps import facility_practitioner, received_json
from carnet.records.consents import consent_follows_flag

# Name-only searches: under NAME_MIN_LETTERS is refused; under NAME_SPECIFIC_LETTERS counts as a
# partial (wildcard) search for detection, since short fragments sweep a care list.
NAME_MIN_LETTERS = 2
NAME_SPECIFIC_LETTERS = 4


@guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
def read(tx: GuardedTx, /, *, patient_id: str) -> PatientView:
    """A patient's chart identity, redacted to what the actor's role and relationship open."""
    patient, replaces_any = tx.patient_to_read(patient_id)
    decision = tx.authorize(patient, RT.PATIENT)
    tx.resource_ids.append(str(patient.id))
    rels = tx.relationships_of([patient])
    tx.expose([patient.id], Channel.CHART, rels, decision.fields)
    view = patient_view(tx, patient, decision.fields)
    return with_replaces(tx, patient, view) if replaces_any else view


@guarded(AuditKind.PHI_SEARCH, RT.PATIENT, targeted=False)
def search(
    tx: GuardedTx,
    /,
    *,
    identifier: str | None = None,
    family: str | None = None,
    given: str | None = None,
    birth_date: dt.date | None = None,
    count: int = SEARCH_MAX_COUNT,
    page: int = 1,
) -> PatientPage:
    """Search never browses: an identifier, or a family name with a birth date, or a name
    among the actor's own patients. At most SEARCH_MAX_COUNT results, SEARCH_MAX_PAGE pages."""
    tx.require(Permission.PATIENT_SEARCH)
    tx.check_scopes(RT.PATIENT)
    if not 1 <= count <= SEARCH_MAX_COUNT:
        raise InvalidInput(f"count must be between 1 and {SEARCH_MAX_COUNT}")
    if not 1 <= page <= SEARCH_MAX_PAGE:
        raise InvalidInput(f"page must be between 1 and {SEARCH_MAX_PAGE}: refine the search")
    rels_open = _opening_patient(tx.ctx.roles)
    blind = tx.keyring.blind
    identifier = (identifier or "").strip() or None
    family = (family or "").strip() or None
    given = (given or "").strip() or None
    kind: Kind
    terms: dict[str, bytes]
    if identifier is not None:
        shape = SearchShape.IDENTIFIER
        tx.query = "identifier"
        kind, terms = "identifier", {"ins_bi": blind.index(IndexKind.IDENTIFIER, identifier)}
        digest_source = f"identifier={identifier}"
    elif family is not None and birth_date is not None:
        shape = SearchShape.NAME
        tx.query = "family,birthdate" + (",given" if given else "")
        kind, terms = (
            "birth",
            {
                "family_bi": blind.index(IndexKind.FAMILY, family),
                "birth_date_bi": blind.index(IndexKind.BIRTH_DATE, birth_date.isoformat()),
            },
        )
        if given is not None:
            terms["given_bi"] = blind.index(IndexKind.GIVEN, given)
        digest_source = f"family={normalize_name(family)}|birth={birth_date}|given={given or ''}"
    elif family is not None or given is not None:
        # A name alone: only among the actor's own patients, matched after decryption.
        # One letter is browsing, not looking someone up; a few letters is a partial sweep.
        names = [normalize_name(v) for v in (family, given) if v]
        if max(len(t.replace(" ", "")) for t in names) < NAME_MIN_LETTERS:
            raise InvalidInput(f"a name search needs at least {NAME_MIN_LETTERS} letters")
        specific = any(len(t.replace(" ", "")) >= NAME_SPECIFIC_LETTERS for t in names)
        shape = SearchShape.NAME if specific else SearchShape.WILDCARD
        tx.query = ",".join(n for n, v in (("family", family), ("given", given)) if v)
        rels_open = rels_open & care.CARE
        # The keyed name prefixes narrow the care list to candidates in SQL, so only those
        # are decrypted; without any (a single word shorter than the prefix: a partial
        # search), the care list is scanned, bounded by CARE_SET_LIMIT.
        kind, terms = "name", name_keys(blind, family=family, given=given)
        digest_source = f"name={normalize_name(family or '')}|{normalize_name(given or '')}"
    else:
        raise InvalidInput(
            "a patient search needs an identifier, or a family name with a birth date,"
            " or a name among your own patients"
        )
    tx.query += f";count={count};page={page}"
    event = SearchEvent(
        shape=shape,
        term_digest=blind.index(IndexKind.IDENTIFIER, digest_source).hex(),
        page=page,
    )
    on_postgres = tx.session.get_bind().dialect.name == "postgresql"
    specific = kind != "name"
    # A specific search's few candidates (one blind index's) are each asked whether they are
    # the actor's; a name's candidates (a prefix key is shared by hundreds of patients at
    # 100,000) are matched against the care list computed once.
    scope = care.filter_shape(tx.ctx, rels_open, array=on_postgres, correlated=specific)
    query = search_statement(StatementShape(kind, tuple(terms), scope))
    if query is None:
        if specific:
            raise Refused("no relationship opens Patient to this role")
        tx.expose([], Channel.SEARCH, {}, (), shape=event)
        return PatientPage(items=[], page=page, count=count, has_more=False)
    params: dict[str, Any] = {**care.filter_params(tx.ctx), **terms}
    if specific:
        params |= {"offset": (page - 1) * count, "limit": count + 1}
        found = tx.patients(query, params, few=True)
    else:
        # Few candidates when the name prefixes narrowed them; a scan of the care list is not.
        candidates = tx.patients(query, params, few=bool(terms))
        found = _match_names(tx, candidates, family, given)[(page - 1) * count : page * count + 1]
    has_more = len(found) > count
    found = found[:count]
    rels = tx.relationships_of(found)
    if specific:  # a specific search locates what it finds (see Relationship.LOCATED)
        rels = {pid: r | {Relationship.LOCATED} for pid, r in rels.items()}
    items: list[PatientView] = []
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    for patient in found:
        fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.PATIENT)
        if not fields:
            continue  # the SQL filter should have kept it out; fail closed anyway
        items.append(patient_view(tx, patient, fields))
        shown.append(patient.id)
        fields_shown |= fields
    tx.resource_ids.extend(str(p) for p in shown)
    tx.reasons.append(f"search by {shape.value}")
    tx.expose(shown, Channel.SEARCH, rels, fields_shown, shape=event)
    return PatientPage(items=items, page=page, count=count, has_more=has_more)


@functools.lru_cache(maxsize=256)
def _opening_patient(roles: frozenset[Role]) -> frozenset[Relationship]:
    """The relationships that open Patient to these roles (the policy's matrix is a constant:
    asked once per set of roles, not on every search)."""
    return granting_relationships(roles=roles, resource=RT.PATIENT)


def _match_names(
    tx: GuardedTx, candidates: list[Patient], family: str | None, given: str | None
) -> list[Patient]:
    """The candidates whose names match (carnet.crypto.blind.name_matches: each term starts a
    word of the name), decrypting only theirs."""
    matches = []
    for patient in candidates:
        if family and not name_matches(
            tx.dec(patient.family_ct, "patients", "family", patient.id) or "", family
        ):
            continue
        if given and not name_matches(tx.dec(patient.given_ct, "patients", "given", patient.id) or "", given):
            continue
        matches.append(patient)
    return matches


@guarded(AuditKind.PHI_CREATE, RT.PATIENT, targeted=False)
def register(tx: GuardedTx, /, *, data: PatientInput) -> PatientView:
    """Register a patient: encrypted fields, blind indexes, duplicate check, version 1."""
    tx.require(Permission.PATIENT_CREATE)
    tx.check_scopes(RT.PATIENT)
    facility_id = parse_id(data.facility_id)
    if facility_id is None or facility_id not in tx.ctx.facility_ids:
        raise Refused("registration outside the actor's facilities")
    # A new patient has no relationship yet: the permission and the facility scope decide.
    tx.reasons.append(f"{Permission.PATIENT_CREATE.value} in the actor's facility")
    designated = facility_practitioner(tx, data.designated_physician_id, facility_id)
    values = data.model_dump(
        exclude={"facility_id", "designated_physician_id", "opposes_other_facilities", "received"}
    )
    check_duplicate(tx, facility_id, values, exclude=None)
    patient_id = new_id()
    patient = Patient(
        id=patient_id,
        facility_id=facility_id,
        gender=data.gender,
        designated_physician_id=designated,
        opposes_other_facilities=data.opposes_other_facilities,
        active=True,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
        **patient_columns(tx, facility_id, patient_id, values),
    )
    tx.session.add(patient)
    tx.session.flush()
    if data.received is not None:
        _keep(tx, patient, data.received)
    replace_name_keys(
        tx.session, tx.keyring.blind, patient_id=patient.id, facility_id=facility_id,
        family=values.get("family"), given=values.get("given"),
    )  # fmt: skip
    tx.patient_ids.append(patient.id)
    full = patient_data(tx, patient, PATIENT_ALL)
    tx.snapshot(RT.PATIENT, patient.id, 1, patient, "create", full)
    if patient.opposes_other_facilities:
        consent_follows_flag(tx, patient)
    return written_patient(tx, patient)


@guarded(AuditKind.PHI_UPDATE, RT.PATIENT, targeted=True)
def update(
    tx: GuardedTx, /, *, patient_id: str, expected_version: int, changes: PatientChanges
) -> PatientView:
    """Change a patient's identity or contact; `expected_version` is the If-Match."""
    patient = tx.patient(patient_id)
    tx.authorize(patient, RT.PATIENT, write=True)
    given_fields = changes.model_dump(exclude_unset=True, exclude_none=True)
    if not given_fields:
        raise InvalidInput("nothing to change")
    # A FHIR update replaces the Patient kept as received; any other door amends it.
    before = kept_state(tx, patient) if changes.received is None else None
    values: dict[str, Any] = {}
    if "designated_physician_id" in given_fields:
        values["designated_physician_id"] = facility_practitioner(
            tx, changes.designated_physician_id, patient.facility_id
        )
    if "gender" in given_fields:
        values["gender"] = changes.gender
    if "opposes_other_facilities" in given_fields:
        values["opposes_other_facilities"] = changes.opposes_other_facilities
    encrypted = {k: v for k, v in given_fields.items() if k in PATIENT_ENCRYPTED}
    if encrypted:
        current = patient_data(tx, patient, PATIENT_ALL)
        merged = {k: current.get(k) for k in PATIENT_ENCRYPTED} | encrypted
        if any(k in encrypted for k in ("ins", "family", "given", "birth_date")):
            check_duplicate(tx, patient.facility_id, merged, exclude=patient.id)
        values |= patient_columns(tx, patient.facility_id, patient.id, encrypted)
        if "family" in encrypted or "given" in encrypted:
            replace_name_keys(
                tx.session, tx.keyring.blind, patient_id=patient.id, facility_id=patient.facility_id,
                family=merged.get("family"), given=merged.get("given"),
            )  # fmt: skip
    tx.bump(Patient, patient, expected_version, **values)
    if changes.received is not None:
        _keep(tx, patient, changes.received)
    else:
        follow(tx, patient, before)
    full = patient_data(tx, patient, PATIENT_ALL)
    tx.snapshot(RT.PATIENT, patient.id, patient.version_id, patient, "update", full)
    if "opposes_other_facilities" in given_fields:
        consent_follows_flag(tx, patient)
    return written_patient(tx, patient)


@guarded(AuditKind.PHI_DELETE, RT.PATIENT, targeted=True)
def deactivate(tx: GuardedTx, /, *, patient_id: str, expected_version: int) -> PatientView:
    """A FHIR delete of a Patient: the record is kept, marked inactive, versioned and audited."""
    patient = tx.patient(patient_id)
    tx.authorize(patient, RT.PATIENT, write=True)
    if not patient.active:
        raise Conflict("this patient record is already inactive")
    before = kept_state(tx, patient)
    tx.bump(Patient, patient, expected_version, active=False)
    follow(tx, patient, before)
    full = patient_data(tx, patient, PATIENT_ALL)
    tx.snapshot(RT.PATIENT, patient.id, patient.version_id, patient, "delete", full)
    return written_patient(tx, patient)


def _keep(tx: GuardedTx, patient: Patient, received: dict[str, Any]) -> None:
    """The Patient as received, kept whole (encrypted): every reference it holds must resolve
    in carnet, or it is refused naming the element."""
    text = received_json(tx, received, patient, {})
    patient.received_ct = tx.enc(text, patient.facility_id, "patients", "received", patient.id)
    tx.session.flush()
