"""`carnet import`, the rows: each FHIR resource of an import unit validated (fhir.resources R4B,
then carnet's own input rules) and turned into the rows the loader writes (carnet.phi.loader),
with the references between resources of one run resolved. See carnet.phi.importer."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.coverage import Coverage as FhirCoverage
from fhir.resources.R4B.diagnosticreport import DiagnosticReport as FhirDiagnosticReport
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.invoice import Invoice as FhirInvoice
from fhir.resources.R4B.location import Location as FhirLocation
from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.organization import Organization as FhirOrganization
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.paymentreconciliation import PaymentReconciliation as FhirPaymentReconciliation
from fhir.resources.R4B.practitioner import Practitioner as FhirPractitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole as FhirPractitionerRole
from fhir.resources.R4B.servicerequest import ServiceRequest as FhirServiceRequest
from pydantic import ValidationError
from sqlalchemy import select

from carnet.billing.models import Invoice
from carnet.crypto.blind import IndexKind
from carnet.fhir.core.api import type_name
from carnet.fhir.core.mapping import ATC_SYSTEM, LOINC, received_instant
from carnet.fhir.core.model_check import conforms
from carnet.fhir.resources import billing
from carnet.fhir.resources.allergy import allergy_input
from carnet.fhir.resources.condition import condition_input
from carnet.fhir.resources.interventions import KINDS as INTERVENTION_KINDS
from carnet.fhir.resources.interventions import intervention_input
from carnet.fhir.resources.observation import observation_input
from carnet.fhir.resources.patient import INS_SYSTEM, patient_input
from carnet.interventions.models import Intervention
from carnet.kernel import clock
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.org.models import DirectoryEntry, Facility, Location, Practitioner
from carnet.patients.models import Patient
from carnet.phi.schemas import PaymentInput
from carnet.prescriptions.models import Prescription
from carnet.records.models import Allergy, Condition, DiagnosticReport, Observation, ServiceRequest
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter

# The resource types an import takes, each validated with its fhir.resources R4B model.
MODELS: dict[str, Any] = {
    "Patient": FhirPatient,
    "AllergyIntolerance": AllergyIntolerance,
    "Condition": FhirCondition,
    "Observation": FhirObservation,
    "Coverage": FhirCoverage,
    "DiagnosticReport": FhirDiagnosticReport,
    "Invoice": FhirInvoice,
    "PaymentReconciliation": FhirPaymentReconciliation,
    "Encounter": FhirEncounter,
    "MedicationRequest": FhirMedicationRequest,
    "ServiceRequest": FhirServiceRequest,
    "Practitioner": FhirPractitioner,
    "PractitionerRole": FhirPractitionerRole,
    "Organization": FhirOrganization,
    "Location": FhirLocation,
    **{name: kind.model for name, kind in INTERVENTION_KINDS.items()},
}
# Another system's directory: matched by identifier to carnet's, or kept as received.
DIRECTORY = ("Practitioner", "PractitionerRole", "Organization", "Location")
RPPS = "urn:oid:1.2.250.1.71.4.2.1"  # French national practitioner identifier
FINESS = "urn:oid:1.2.250.1.71.4.2.2"  # French national facility identifier
# What a reference to something already in carnet (`Type/<carnet id>`) may name: records of
# the same patient, entries of the facility's directory.
_PATIENT_RECORDS: dict[str, Any] = {
    "Observation": Observation,
    "Condition": Condition,
    "AllergyIntolerance": Allergy,
    "DiagnosticReport": DiagnosticReport,
    "Encounter": Encounter,
    "MedicationRequest": Prescription,
    "ServiceRequest": ServiceRequest,
    **dict.fromkeys(INTERVENTION_KINDS, Intervention),
}


INVOICE_STATUSES = ("draft", "issued", "balanced", "cancelled")

# An element's path while references are rewritten: (the parent's, a key or a list index).
_At = tuple[Any, str | int]
_CONTAINERS = (dict, list)


def _spelled(at: _At) -> str:
    """`Encounter.participant[0].individual` of (((None, "Encounter.participant"), 0), "individual")."""
    parts: list[str] = []
    node: Any = at
    while node is not None:
        node, step = node
        parts.append(f"[{step}]" if isinstance(step, int) else step if node is None else f".{step}")
    return "".join(reversed(parts))


@dataclass
class Billed:
    """An invoice written by an earlier unit of the run, as payments of later units need it."""

    id: uuid.UUID
    patient_id: uuid.UUID
    total_cents: int
    paid_cents: int
    status: str
    currency: str


@dataclass
class Item:
    source: str
    resource: Any  # a dict when well formed
    full_url: str | None = None
    assigned: uuid.UUID | None = None  # carnet's id for it, given before the run reads any unit
    matched: bool = False  # a directory entry carnet already holds (matched by identifier)
    refs: dict[uuid.UUID, str] = field(default_factory=dict)  # resources of the run it references


@dataclass
class Unit:
    transaction: bool
    items: list[Item]


class Run:
    """One import run: the facility, the ids it created, and the rows of the unit at hand."""

    def __init__(self, runtime: Runtime, facility_id: uuid.UUID) -> None:
        self.runtime = runtime
        self.facility_id = facility_id
        self.patients: dict[str, uuid.UUID] = {}  # "Patient/<source id>" or urn:uuid -> new id
        self.ins_seen: set[bytes] = set()
        self.ins_registered: set[bytes] = set()  # of the unit at hand, found in one query
        self.now = clock.now()
        # Observations by reference ("Observation/<source id>" or urn:uuid): written ones
        # (id, patient), and the rows of the unit at hand; the unit's reports and their results.
        self.observations: dict[str, tuple[uuid.UUID, uuid.UUID]] = {}
        self.unit_observations: dict[str, dict[str, Any]] = {}
        self.unit_reports: list[tuple[Item, dict[str, Any], list[str]]] = []
        # Invoices by reference ("Invoice/<source id>" or urn:uuid): written ones, and the rows
        # of the unit at hand; the unit's payments (their row, the invoice named, currency).
        self.invoices: dict[str, Billed] = {}
        self.unit_invoices: dict[str, dict[str, Any]] = {}
        self.unit_payments: list[tuple[Item, dict[str, Any], str, str]] = []
        self.numbers_seen: set[str] = set()  # invoice numbers written by this run
        self.unit_numbers: set[str] = set()  # those of the unit at hand
        self.numbers_registered: set[str] = set()  # the unit's numbers already in carnet
        with runtime.session_factory() as session:
            finess = session.scalar(select(Facility.finess).where(Facility.id == facility_id))
        self.own_numbers = f"F{finess}-"  # the form of the facility's carnet numbering
        # Every resource of the run by the names its references use ("Type/<source id>", its
        # fullUrl), with the type and carnet id it gets: references resolve in any order, across
        # files. Those that named a resource the run then rejected are reported (`dangling`).
        self.index: dict[str, tuple[str, uuid.UUID]] = {}
        self.accepted_ids: set[uuid.UUID] = set()
        self.referenced: dict[uuid.UUID, str] = {}  # carnet id -> where it was first referenced
        self.in_carnet: dict[str, bool] = {}  # `Type/<carnet id>` references checked
        self.item_refs: dict[uuid.UUID, str] = {}  # those of the resource being mapped

    def preassign(self, units: list[Unit]) -> None:
        """Give every resource of the run its carnet id before any is read."""
        for unit in units:
            for item in unit.items:
                resource = item.resource
                if not isinstance(resource, dict):
                    continue
                rtype = resource.get("resourceType")
                if not isinstance(rtype, str) or rtype not in MODELS:
                    continue
                item.assigned = new_id()
                source_id = resource.get("id")
                for key in (f"{rtype}/{source_id}" if isinstance(source_id, str) else None, item.full_url):
                    if key and key not in self.index:
                        self.index[key] = (rtype, item.assigned)

    def match_directory(self, units: list[Unit]) -> None:
        """Another system's Practitioner, PractitionerRole, Organization and Location: one
        carnet already holds (its practitioner by RPPS, its facility by FINESS, or an entry an
        earlier import kept, by the same identifier) is referenced as that one and not kept
        twice; within the run, the first of several with one identifier stands for all."""
        seen: dict[tuple[str, str, str], uuid.UUID] = {}
        with self.runtime.session_factory() as session:
            for unit in units:
                for item in unit.items:
                    resource = item.resource
                    if not isinstance(resource, dict) or resource.get("resourceType") not in DIRECTORY:
                        continue
                    rtype = str(resource["resourceType"])
                    system, value = directory_identifier(resource)
                    if system is None or value is None:
                        continue
                    found = seen.get((rtype, system, value))
                    if found is None and rtype == "Practitioner" and system == RPPS:
                        found = session.scalar(
                            select(Practitioner.id).where(
                                Practitioner.rpps == value, Practitioner.facility_id == self.facility_id
                            )
                        )
                    if found is None and rtype == "Organization" and system == FINESS:
                        found = session.scalar(
                            select(Facility.id).where(
                                Facility.finess == value, Facility.id == self.facility_id
                            )
                        )
                    if found is None:
                        found = session.scalar(
                            select(DirectoryEntry.id).where(
                                DirectoryEntry.facility_id == self.facility_id,
                                DirectoryEntry.resource_type == rtype,
                                DirectoryEntry.identifier_system == system,
                                DirectoryEntry.identifier_value == value,
                            )
                        )
                    if found is None:
                        assert item.assigned is not None
                        seen[(rtype, system, value)] = item.assigned
                        continue
                    item.matched = True
                    item.assigned = found
                    self.accepted_ids.add(found)
                    source_id = resource.get("id")
                    for key in (
                        f"{rtype}/{source_id}" if isinstance(source_id, str) else None,
                        item.full_url,
                    ):
                        if key:
                            self.index[key] = (rtype, found)

    def rewrite(self, value: Any, path: str) -> None:
        """Rewrite every reference inside `value` (in place) to carnet's: one to a resource of
        this run, or one already in carnet (of this facility). Contained ones (`#id`) stay.
        Anything else is refused, naming the element (`Encounter.participant[0].individual`)."""
        self._walk(value, (None, path))

    def _walk(self, value: Any, at: _At) -> None:
        # Every element of every imported resource is visited: only objects and lists are
        # descended into, and an element's path is spelled out only when a reference needs it.
        if isinstance(value, dict):
            reference = value.get("reference")
            if isinstance(reference, str):
                value["reference"] = self._resolve(reference, _spelled(at))
            for key, item in value.items():
                if key != "reference" and isinstance(item, _CONTAINERS):
                    self._walk(item, (at, key))
        elif isinstance(value, list):
            for number, item in enumerate(value):
                if isinstance(item, _CONTAINERS):
                    self._walk(item, (at, number))

    def _resolve(self, reference: str, path: str) -> str:
        if reference.startswith("#"):
            return reference
        hit = self.index.get(reference)
        if hit is None and "://" in reference:
            hit = self.index.get("/".join(reference.rstrip("/").split("/")[-2:]))
        if hit is not None:
            rtype, carnet_id = hit
            self.item_refs.setdefault(carnet_id, f"{path} ({reference})")
            return f"{rtype}/{carnet_id}"
        rtype, _, rid = reference.partition("/")
        if self._in_carnet(rtype, rid):
            return reference
        raise InvalidInput(f"{path}: carnet cannot resolve this reference (refused, not dropped)")

    def _in_carnet(self, rtype: str, rid: str) -> bool:
        """`Type/<carnet id>` of a record or directory entry of this facility."""
        key = f"{rtype}/{rid}"
        if key in self.in_carnet:
            return self.in_carnet[key]
        wanted = parse_id(rid)
        found = False
        if wanted is not None:
            model: Any = _PATIENT_RECORDS.get(rtype) or {
                "Patient": Patient,
                "Practitioner": Practitioner,
                "Location": Location,
            }.get(rtype)
            with self.runtime.session_factory() as session:
                if rtype == "Organization":
                    found = wanted == self.facility_id
                elif model is not None:
                    row = session.get(model, wanted)
                    found = row is not None and row.facility_id == self.facility_id
                if not found and rtype in DIRECTORY:
                    entry = session.get(DirectoryEntry, wanted)
                    found = entry is not None and entry.facility_id == self.facility_id
        self.in_carnet[key] = found
        return found

    def keep(self, data: dict[str, Any], rtype: str, resolved: tuple[str, ...]) -> None:
        """Every reference but those of `resolved` (rewritten by the mapper) to carnet's."""
        for key, value in data.items():
            if key not in resolved and key != "id":
                self.rewrite(value, f"{rtype}.{key}")

    def dangling(self) -> list[str]:
        """References of accepted resources to resources of the run that were rejected."""
        return [where for carnet_id, where in self.referenced.items() if carnet_id not in self.accepted_ids]

    def link_results(self, report: dict[str, Any], references: list[str]) -> list[uuid.UUID]:
        """Point a report's result Observations at it: those of this unit now, those written
        by an earlier unit returned (to update once the report is written). All or none."""
        in_unit: list[dict[str, Any]] = []
        earlier: list[uuid.UUID] = []
        for reference in references:
            row = self.unit_observations.get(reference)
            if row is not None:
                if row["patient_id"] != report["patient_id"]:
                    raise InvalidInput("DiagnosticReport.result: an Observation about another patient")
                in_unit.append(row)
                continue
            written = self.observations.get(reference)
            if written is None:
                raise InvalidInput("DiagnosticReport.result: names no Observation of this import")
            if written[1] != report["patient_id"]:
                raise InvalidInput("DiagnosticReport.result: an Observation about another patient")
            earlier.append(written[0])
        for row in in_unit:
            row["report_id"] = report["id"]
        return earlier

    def look_up_identifiers(self, unit: Unit) -> None:
        """The unit's INS already registered in the facility: one query, not one per patient."""
        blind = self.runtime.keyring.blind
        wanted = {
            blind.index(IndexKind.IDENTIFIER, ident["value"])
            for item in unit.items
            if isinstance(item.resource, dict) and item.resource.get("resourceType") == "Patient"
            for ident in item.resource.get("identifier") or []
            if isinstance(ident, dict)
            and ident.get("system") == INS_SYSTEM
            and isinstance(ident.get("value"), str)
        }
        self.ins_registered = set()
        if not wanted:
            return
        with self.runtime.session_factory() as session:
            found = session.scalars(
                select(Patient.ins_bi).where(
                    Patient.facility_id == self.facility_id, Patient.ins_bi.in_(wanted)
                )
            )
            self.ins_registered = {bi for bi in found if bi is not None}

    def look_up_numbers(self, unit: Unit) -> None:
        """The unit's invoice numbers already in carnet: one query."""
        wanted = {
            number
            for item in unit.items
            if isinstance(item.resource, dict) and item.resource.get("resourceType") == "Invoice"
            if (number := invoice_number(item.resource)) is not None
        }
        self.numbers_registered = set()
        if wanted:
            with self.runtime.session_factory() as session:
                self.numbers_registered = set(
                    session.scalars(select(Invoice.number).where(Invoice.number.in_(wanted)))
                )

    def pay(
        self, reference: str, payment: dict[str, Any], currency: str, paid: dict[uuid.UUID, int]
    ) -> uuid.UUID:
        """Point a payment at the invoice it names (of this unit, or written by an earlier one),
        as the gate's record_payment would take it; `paid`: what the unit's payments accepted so
        far pay of each invoice. Returns the invoice's patient."""
        row = self.unit_invoices.get(reference)
        billed = self.invoices.get(reference) if row is None else None
        patient: uuid.UUID
        if row is not None:
            invoice_id, patient, total = row["id"], row["patient_id"], row["total_cents"]
            status, due_currency, before = row["status"], row["currency"], 0
        elif billed is not None:
            invoice_id, patient, total = billed.id, billed.patient_id, billed.total_cents
            status, due_currency, before = billed.status, billed.currency, billed.paid_cents
        else:
            raise InvalidInput(
                "detail.request names no Invoice of this import (an invoice already in carnet is paid"
                " through the API, naming the version read)"
            )
        if status not in ("issued", "balanced"):
            raise Conflict(f"this invoice is {status}: only an issued invoice takes a payment")
        if currency != due_currency:
            raise InvalidInput("a payment is in its invoice's currency")
        due = total - before - paid.get(invoice_id, 0)
        if payment["amount_cents"] > due:
            raise InvalidInput(f"the payment is more than the {due / 100:.2f} {due_currency} still due")
        paid[invoice_id] = paid.get(invoice_id, 0) + payment["amount_cents"]
        payment["invoice_id"] = invoice_id
        if status == "issued" and payment["amount_cents"] == due:
            if row is not None:
                row["status"] = "balanced"
            else:
                payment["settles"] = True  # the earlier unit's invoice: updated when written
        return patient

    # -- references ---------------------------------------------------------------------------
    def patient_ref(self, reference: str | None, pending: dict[str, uuid.UUID]) -> uuid.UUID:
        if not reference:
            raise InvalidInput("the resource names no patient")
        found = pending.get(reference) or self.patients.get(reference)
        if found is not None:
            return found
        pid = parse_id(reference.removeprefix("Patient/"))
        if pid is not None:
            with self.runtime.session_factory() as session:
                row = session.execute(
                    select(Patient.facility_id, Patient.merged_into_id).where(Patient.id == pid)
                ).first()
            if row is not None and row.facility_id == self.facility_id:
                if row.merged_into_id is not None:
                    # Its records moved to the record kept: nothing more is filed on the duplicate.
                    raise InvalidInput(
                        f"this patient was merged into Patient/{row.merged_into_id}: reference that record"
                    )
                return pid
        raise InvalidInput("the patient reference resolves to no patient of this import or facility")

    # -- mapping ------------------------------------------------------------------------------
    def rows(self, item: Item, pending: dict[str, uuid.UUID]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        resource = item.resource
        if not isinstance(resource, dict):
            raise InvalidInput("not a JSON object")
        rtype = type_name(resource.get("resourceType"))
        model = MODELS.get(rtype)
        if model is None:
            raise InvalidInput(
                f"{rtype}: carnet does not hold this resource type (refused, not dropped); it takes "
                + ", ".join(sorted(MODELS))
            )
        try:
            # The compiled check first; fhir.resources itself when it cannot tell (and for the
            # message naming the elements).
            if not conforms(resource):
                model.model_validate(resource)
        except ValidationError as exc:
            places = sorted({".".join([rtype, *(str(p) for p in e.get("loc", ()))]) for e in exc.errors()})
            raise InvalidInput(", ".join(places[:10]) + ": not valid FHIR R4 (refused)") from None
        # Valid as sent: map the JSON itself (re-serializing the model was 40 % of an import). The
        # item's own parsed copy is handed over, not copied again: read_units parsed it for this
        # run alone, and the import reads nothing of it afterwards but its resourceType.
        data: dict[str, Any] = resource
        self.item_refs = item.refs = {}
        mapper: Callable[[dict[str, Any], Item, dict[str, uuid.UUID]], list[tuple[str, dict[str, Any]]]] = (
            getattr(self, f"_{rtype.lower()}")
        )
        return rtype, mapper(data, item, pending)

    def _base(self, patient_id: uuid.UUID, item: Item | None = None) -> dict[str, Any]:
        return {
            "id": (item.assigned if item is not None else None) or new_id(),
            "facility_id": self.facility_id,
            "patient_id": patient_id,
            "version_id": 1,
            "created_at": self.now,
            "updated_at": self.now,
        }

    def _patient(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        # Kept whole, its references carnet's; carnet's columns read it without its practitioners
        # and organization (another system's: no designated physician, the import's facility).
        self.keep(data, "Patient", ())
        checked = patient_input(
            {k: v for k, v in data.items() if k not in ("generalPractitioner", "managingOrganization")},
            str(self.facility_id),
        )
        blind = self.runtime.keyring.blind
        if checked.ins:
            ins_bi = blind.index(IndexKind.IDENTIFIER, checked.ins)
            if ins_bi in self.ins_seen:
                raise Conflict("a patient with this INS is already in this import")
            if ins_bi in self.ins_registered:
                raise Conflict("a patient with this INS is already registered")
            self.ins_seen.add(ins_bi)
        patient_id = item.assigned or new_id()
        for key in (f"Patient/{data['id']}" if data.get("id") else None, item.full_url):
            if key:
                pending[key] = patient_id
        plain = {
            "ins": checked.ins,
            "family": checked.family,
            "given": checked.given,
            "birth_date": checked.birth_date.isoformat(),
            "address": checked.address,
            "phone": checked.phone,
            "email": checked.email,
        }
        received = received_body(data)
        row = {
            "id": patient_id,
            "facility_id": self.facility_id,
            "received": received,
            "gender": checked.gender,
            "designated_physician_id": None,
            "opposes_other_facilities": checked.opposes_other_facilities,
            "active": True,
            "merged_into_id": None,
            "version_id": 1,
            "created_at": self.now,
            "updated_at": self.now,
            **plain,
        }
        snapshot = {
            "id": str(patient_id),
            "facility_id": str(self.facility_id),
            "version_id": 1,
            "gender": checked.gender,
            "active": True,
            "designated_physician_id": None,
            "opposes_other_facilities": checked.opposes_other_facilities,
            "received": received,
            **plain,
        }
        version = {
            "id": new_id(),
            "resource_type": "Patient",
            "resource_id": patient_id,
            "version_id": 1,
            "patient_id": patient_id,
            "facility_id": self.facility_id,
            "recorded_at": self.now,
            "author_id": None,
            "action": "create",
            "snapshot": snapshot,
        }
        rows: list[tuple[str, dict[str, Any]]] = [("patients", row), ("resource_versions", version)]
        if checked.opposes_other_facilities:
            rows.extend(self._opposition(patient_id))
        return rows

    def _opposition(self, patient_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
        """An imported restriction is a Consent too (as the gate records one at registration)."""
        consent = {
            "id": new_id(),
            "patient_id": patient_id,
            "facility_id": self.facility_id,
            "kind": "oppose-other-facilities",
            "status": "active",
            "recorded_by": None,
            "recorded_at": self.now,
            "withdrawn_by": None,
            "withdrawn_at": None,
            "version_id": 1,
            "created_at": self.now,
            "updated_at": self.now,
        }
        # As the gate's snapshot of a Consent: ids and times as text.
        snapshot = {k: v if v is None or isinstance(v, int | str) else str(v) for k, v in consent.items()}
        version = {
            "id": new_id(),
            "resource_type": "Consent",
            "resource_id": consent["id"],
            "version_id": 1,
            "patient_id": patient_id,
            "facility_id": self.facility_id,
            "recorded_at": self.now,
            "author_id": None,
            "action": "create",
            "snapshot": snapshot,
        }
        return [("consents", consent), ("resource_versions", version)]

    def _allergyintolerance(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Any coding system (ATC is what the medication checks read), kept whole."""
        sent = data.get("patient") or {}
        patient = self.patient_ref(sent.get("reference"), pending)
        data["patient"] = {**sent, "reference": f"Patient/{patient}"}
        self.keep(data, "AllergyIntolerance", ("patient",))
        checked = allergy_input(data)
        row = self._base(patient, item) | {
            "substance_code": checked.substance_code,
            "substance_display": checked.substance_display,
            "criticality": checked.criticality,
            "clinical_status": checked.clinical_status,
            "recorded_by": None,
            "received": received_body(data),
        }
        return [("allergies", row)]

    def _condition(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Any coding system (ICD-10's codes checked), kept whole like an Observation."""
        subject = data.get("subject") or {}
        patient = self.patient_ref(subject.get("reference"), pending)
        data["subject"] = {**subject, "reference": f"Patient/{patient}"}
        self.keep(data, "Condition", ("subject",))
        values = condition_input(data)
        row = self._base(patient, item) | {
            "code": values.code,
            "display": values.display,
            "clinical_status": values.clinical_status,
            "verification_status": values.verification_status,
            "onset_at": values.onset_at,
            "recorded_by": None,
            "received": received_body(data),
        }
        return [("conditions", row)]

    def _observation(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The columns by the Observation module's own rules, and the resource kept whole
        (subject rewritten to carnet's patient); a reference carnet cannot resolve is refused."""
        subject = data.get("subject") or {}
        patient = self.patient_ref(subject.get("reference"), pending)
        data["subject"] = {**subject, "reference": f"Patient/{patient}"}
        self.keep(data, "Observation", ("subject",))
        values = observation_input(data)
        row = self._base(patient, item) | {
            "encounter_id": None,
            "report_id": None,
            "category": values.category,
            "code": values.code,
            "display": values.display,
            "value_number": values.value_number,
            "unit": values.unit,
            "value_text": values.value_text,
            "effective_at": values.effective_at,
            "status": values.status,
            "performer_id": None,
            "received": received_body(data),
        }
        for key in (item.full_url, f"Observation/{data['id']}" if data.get("id") else None):
            if key:
                self.unit_observations[key] = row
        return [("observations", row)]

    def _diagnosticreport(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """A lab report; its `result` Observations (of this import) are linked to it."""
        subject = data.get("subject") or {}
        patient = self.patient_ref(subject.get("reference"), pending)
        coding = ((data.get("code") or {}).get("coding") or [{}])[0]
        issued = instant(data.get("issued") or data.get("effectiveDateTime"))
        if not coding.get("code"):
            raise InvalidInput("DiagnosticReport.code.coding: a code is required")
        if issued is None:
            raise InvalidInput("DiagnosticReport.issued: required (or effectiveDateTime)")
        references = [r.get("reference") for r in data.get("result") or [] if isinstance(r, dict)]
        if not all(isinstance(r, str) and r for r in references):
            raise InvalidInput("DiagnosticReport.result: each is a reference to an Observation")
        data["subject"] = {**subject, "reference": f"Patient/{patient}"}
        self.keep(data, "DiagnosticReport", ("subject",))
        row = self._base(patient, item) | {
            "code": str(coding["code"])[:20],
            "display": str(coding.get("display") or coding["code"])[:200],
            "status": str(data.get("status") or "final")[:20],
            "issued_at": issued,
            "conclusion": data.get("conclusion") or None,
            "performer_id": None,
            "received": received_body(data),
        }
        self.unit_reports.append((item, row, [str(r) for r in references]))
        return [("diagnostic_reports", row)]

    def _encounter(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """A stay or visit of another system, kept whole: its class gives the kind, its period
        when; its practitioners and locations are the directory entries of this import."""
        subject = data.get("subject") or {}
        patient = self.patient_ref(subject.get("reference"), pending)
        data["subject"] = {**subject, "reference": f"Patient/{patient}"}
        self.keep(data, "Encounter", ("subject",))
        period = data.get("period") or {}
        start = received_instant(period.get("start"), "Encounter.period.start")
        end = received_instant(period["end"], "Encounter.period.end") if period.get("end") else None
        klass = str((data.get("class") or {}).get("code") or "")
        row = self._base(patient, item) | {
            "kind": ENCOUNTER_KINDS.get(klass, "outpatient"),
            "status": str(data.get("status") or "unknown")[:20],
            "start_at": start,
            "end_at": end,
            "location_id": None,
            "attending_id": None,
            "received": received_body(data),
        }
        return [("encounters", row)]

    def _medicationrequest(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """A prescription of another system, kept whole (any code system: the ATC coding is what
        carnet's checks read when there is one); its prescriber is in its directory entries."""
        subject = data.get("subject") or {}
        patient = self.patient_ref(subject.get("reference"), pending)
        data["subject"] = {**subject, "reference": f"Patient/{patient}"}
        if data.get("medicationReference") is not None:
            raise InvalidInput(
                "MedicationRequest.medicationReference: carnet holds no Medication resource; send"
                " medicationCodeableConcept (refused, not dropped)"
            )
        self.keep(data, "MedicationRequest", ("subject",))
        concept = data.get("medicationCodeableConcept") or {}
        codings = [c for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]
        atc = next((c for c in codings if c.get("system") == ATC_SYSTEM), None)
        coding = atc or (codings[0] if codings else {})
        # A medication named by text alone, or in a system the checks cannot read (RxNorm...), is
        # kept as sent; its substance column (what the checks read) holds an ATC code or nothing.
        code = str(coding.get("code") or "")
        if len(code) > 40:
            raise InvalidInput("MedicationRequest.medicationCodeableConcept.coding.code: longer than 40")
        display = str(coding.get("display") or concept.get("text") or code)
        if not display:
            raise InvalidInput("MedicationRequest.medicationCodeableConcept: a coding or a text is required")
        dosage = next(
            (
                str(d["text"])
                for d in data.get("dosageInstruction") or []
                if isinstance(d, dict) and d.get("text")
            ),
            "",
        )
        validity = (data.get("dispenseRequest") or {}).get("validityPeriod") or {}
        row = self._base(patient, item) | {
            "prescriber_id": None,
            "encounter_id": None,
            "medication_code": code,
            "medication_display": display[:200],
            "substance_code": str((atc or {}).get("code") or ""),
            "dosage_text": dosage[:500],
            "status": str(data.get("status") or "unknown")[:20],
            "authored_at": received_instant(data.get("authoredOn"), "MedicationRequest.authoredOn"),
            "valid_until": received_instant(
                validity["end"], "MedicationRequest.dispenseRequest.validityPeriod.end"
            )
            if validity.get("end")
            else None,
            "renewed_from_id": None,
            "stop_reason": None,
            "allergy_override_reason": None,
            "received": received_body(data),
        }
        return [("prescriptions", row)]

    def _servicerequest(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Another system's order (a lab test, any code system), kept whole: its requester and
        numbers are named in it, not carnet's (no carnet placer number: the laboratory's results
        for carnet's own orders find those); results of the run name it in `basedOn`."""
        subject = data.get("subject") or {}
        patient = self.patient_ref(subject.get("reference"), pending)
        data["subject"] = {**subject, "reference": f"Patient/{patient}"}
        self.keep(data, "ServiceRequest", ("subject",))
        concept = data.get("code") or {}
        codings = [c for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]
        coding = next((c for c in codings if c.get("system") == LOINC), codings[0] if codings else {})
        code = str(coding.get("code") or "")
        display = str(coding.get("display") or concept.get("text") or code)
        if len(code) > 20:
            code = ""  # the column lists what fits; the resource keeps the code whole
        categories = {
            str(c.get("code"))
            for concept in data.get("category") or []
            if isinstance(concept, dict)
            for c in concept.get("coding") or []
            if isinstance(c, dict)
        }
        when = data.get("authoredOn") or data.get("occurrenceDateTime")
        row = self._base(patient, item) | {
            "encounter_id": None,
            "requester_id": None,
            "placer_number": None,
            "category": "laboratory" if categories & {"LAB", "108252007"} else "other",
            "code": code,
            "display": display[:200],
            "priority": str(data.get("priority") or "routine")[:10],
            "status": str(data.get("status") or "unknown")[:20],
            "authored_at": received_instant(when, "ServiceRequest.authoredOn") if when else self.now,
            "received": received_body(data),
        }
        return [("service_requests", row)]

    def _intervention(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """An immunization, procedure, medication administered or statement, kept whole."""
        rtype = str(data["resourceType"])
        kind = INTERVENTION_KINDS[rtype]
        sent = data.get(kind.patient) or {}
        patient = self.patient_ref(sent.get("reference"), pending)
        data[kind.patient] = {**sent, "reference": f"Patient/{patient}"}
        self.keep(data, rtype, (kind.patient,))
        values = intervention_input(kind, data)
        row = self._base(patient, item) | {
            "resource_type": rtype,
            "code_system": values.code_system,
            "code": values.code,
            "display": values.display,
            "status": values.status,
            "occurred_at": values.occurred_at,
            "encounter_id": None,
            "recorded_by": None,
            "received": received_body(data),
        }
        return [("interventions", row)]

    _immunization = _procedure = _medicationadministration = _medicationstatement = _specimen = _intervention

    def _directory(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Another system's directory entry: one carnet holds already (matched by identifier)
        is referenced, not kept twice; any other is kept as received, its references carnet's."""
        if item.matched:
            return []
        rtype = str(data["resourceType"])
        self.keep(data, rtype, ())
        system, value = directory_identifier(data)
        row = {
            "id": item.assigned or new_id(),
            "facility_id": self.facility_id,
            "resource_type": rtype,
            "identifier_system": system,
            "identifier_value": value,
            "resource": json.dumps(received_body(data), ensure_ascii=False, sort_keys=True),
            "created_at": self.now,
        }
        return [("directory_entries", row)]

    _practitioner = _practitionerrole = _organization = _location = _directory

    def _coverage(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        patient = self.patient_ref((data.get("beneficiary") or {}).get("reference"), pending)
        period = data.get("period") or {}
        start = instant(period.get("start"))
        if start is None or not data.get("subscriberId"):
            raise InvalidInput("a Coverage needs period.start and subscriberId")
        payor = (data.get("payor") or [{}])[0]
        data["beneficiary"] = {**data["beneficiary"], "reference": f"Patient/{patient}"}
        self.keep(data, "Coverage", ("beneficiary",))
        row = self._base(patient, item) | {
            "kind": code_of(data.get("type") or {}, "AMO")[:10],
            "payer": str(payor.get("display") or payor.get("reference") or "unknown")[:200],
            "member_id": data["subscriberId"],
            "status": data.get("status") or "active",
            "period_start": start,
            "period_end": instant(period.get("end")),
            "received": received_body(data),
        }
        return [("coverages", row)]

    def _invoice(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """An invoice of another system: its lines and amounts checked as the API checks them,
        its status kept (draft, issued, balanced, cancelled with its reason), its number kept."""
        patient = self.patient_ref((data.get("subject") or {}).get("reference"), pending)
        status = data.get("status") or "issued"
        if status not in INVOICE_STATUSES:
            raise InvalidInput("an imported Invoice is draft, issued, balanced or cancelled")
        encounters = [
            e
            for e in data.get("extension") or []
            if isinstance(e, dict) and e.get("url") == billing.INVOICE_ENCOUNTER
        ]
        checked = billing.invoice_input(
            dict(
                data,
                subject={"reference": f"Patient/{patient}"},
                status="draft" if status == "draft" else "issued",
                extension=[],
            )
        )
        total = sum(line.amount_cents for line in checked.lines)
        if total > 100_000_000:
            raise InvalidInput("an invoice totals at most 1,000,000.00")
        reason = None
        if status == "cancelled":
            reason = str(data.get("cancelledReason") or "").strip()
            if not reason or len(reason) > 200:
                raise InvalidInput("a cancelled invoice needs its cancelledReason (at most 200 characters)")
        number = invoice_number(data)
        if number is not None:
            if len(number) > 30:
                raise InvalidInput("an invoice number (identifier) is at most 30 characters")
            if number.startswith(self.own_numbers):
                raise InvalidInput(
                    "an invoice number of this facility's carnet numbering is not imported (the sequence"
                    " stays gapless): send the issuing system's number, or none to number it here"
                )
            if number in self.numbers_seen or number in self.unit_numbers:
                raise Conflict("an invoice with this number is already in this import")
            if number in self.numbers_registered:
                raise Conflict("an invoice with this number is already in carnet")
            self.unit_numbers.add(number)
        issued = None if status == "draft" else (instant(data.get("date")) or self.now)
        row = self._base(patient) | {
            "encounter_id": self._stay(encounters, patient),
            "number": number,  # None: numbered when written
            "status": status,
            "issued_at": issued,
            "total_cents": total,
            "currency": checked.currency,
            "cancel_reason": reason,
        }
        rows: list[tuple[str, dict[str, Any]]] = [("invoices", row)]
        for line in checked.lines:
            rows.append(
                (
                    "invoice_lines",
                    {
                        "id": new_id(),
                        "facility_id": self.facility_id,
                        "invoice_id": row["id"],
                        "code": line.code,
                        "description": line.description,
                        "amount_cents": line.amount_cents,
                    },
                )
            )
        for key in (item.full_url, f"Invoice/{data['id']}" if data.get("id") else None):
            if key:
                self.unit_invoices[key] = row
        return rows

    def _stay(self, extensions: list[dict[str, Any]], patient: uuid.UUID) -> uuid.UUID | None:
        """The stay an invoice bills, when it is a stay of this patient in carnet; another
        system's stays mean nothing here (as its practitioners), so they are not linked."""
        for extension in extensions:
            reference = str((extension.get("valueReference") or {}).get("reference") or "")
            stay = parse_id(reference.removeprefix("Encounter/"))
            if stay is None:
                continue
            with self.runtime.session_factory() as session:
                found = session.scalar(
                    select(Encounter.id).where(
                        Encounter.id == stay,
                        Encounter.patient_id == patient,
                        Encounter.facility_id == self.facility_id,
                    )
                )
            if found is not None:
                return stay
        return None

    def _paymentreconciliation(
        self, data: dict[str, Any], item: Item, pending: dict[str, uuid.UUID]
    ) -> list[tuple[str, dict[str, Any]]]:
        """A payment received: checked as the API checks it, dated (`created` or `paymentDate`);
        pointed at its invoice once the whole unit is read (Bundles list them in any order)."""
        amount, currency, reference, method = billing.payment_parts(data)
        if not isinstance(reference, str) or not reference:
            raise InvalidInput("detail.request must be a reference to the Invoice paid")
        try:
            PaymentInput(invoice_id=reference, expected_version=1, amount_cents=amount, method=method)
        except ValidationError as exc:
            places = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
            raise InvalidInput("invalid PaymentReconciliation: check " + ", ".join(places)) from None
        received = instant(data.get("created") or data.get("paymentDate"))
        if received is None:
            raise InvalidInput("an imported payment needs its date (created or paymentDate)")
        row = {
            "id": new_id(),
            "facility_id": self.facility_id,
            "invoice_id": None,  # set by pay()
            "amount_cents": amount,
            "method": method,
            "received_at": received,
            "received_by": None,
        }
        self.unit_payments.append((item, row, reference, currency or "EUR"))
        return []


ENCOUNTER_KINDS = {"IMP": "inpatient", "ACUTE": "inpatient", "NONAC": "inpatient", "EMER": "emergency"}


def directory_identifier(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """The identifier a directory entry is matched by: its first with a system and a value."""
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return str(identifier["system"])[:200], str(identifier["value"])[:100]
    return None, None


def invoice_number(resource: dict[str, Any]) -> str | None:
    """The number the issuing system gave an invoice: its first identifier's value."""
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            return str(identifier["value"])
    return None


def received_body(data: dict[str, Any]) -> dict[str, Any]:
    """The resource as carnet keeps it: without the sender's id and version (carnet's own are
    given on read), everything else as sent."""
    body = {k: v for k, v in data.items() if k != "id"}
    kept_meta = {k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    body.pop("meta", None)
    if kept_meta:
        body["meta"] = kept_meta
    return body


def code_of(concept: dict[str, Any], default: str) -> str:
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return default


def instant(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    if len(value) == 10:
        value += "T00:00:00+00:00"
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
