"""Consents: the patient's privacy decisions, honoured by the policy; run only by the gate kernel."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select

from carnet.access.policy import PATIENT_ALL
from carnet.audit.interfaces import AuditKind
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import Consent, Patient
from carnet.patients.received import follow, kept_state
from carnet.patients.views import patient_data
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.schemas import ConsentView
from carnet.phi.steps import read_one, redact, section, written
from carnet.records.views import consent_data

# Consent kinds: the one the policy honours (care.visible_filter reads the patient's flag).
OPPOSE_OTHER_FACILITIES = "oppose-other-facilities"
CONSENT_KINDS = frozenset({OPPOSE_OTHER_FACILITIES})


def consent_follows_flag(tx: GuardedTx, patient: Patient) -> None:
    """A restriction set on the patient record itself (registration, a Patient update) is
    recorded as a Consent too, so the patient's decisions are all listed in one place."""
    active = list(
        tx.session.scalars(
            select(Consent).where(
                Consent.patient_id == patient.id,
                Consent.kind == OPPOSE_OTHER_FACILITIES,
                Consent.status == "active",
            )
        )
    )
    if patient.opposes_other_facilities and not active:
        consent = Consent(
            id=new_id(),
            patient_id=patient.id,
            facility_id=patient.facility_id,
            kind=OPPOSE_OTHER_FACILITIES,
            status="active",
            recorded_by=tx.ctx.account_id,
            recorded_at=tx.now,
            version_id=1,
            created_at=tx.now,
            updated_at=tx.now,
        )
        tx.session.add(consent)
        tx.session.flush()
        tx.snapshot(RT.CONSENT, consent.id, 1, patient, "create", consent_data(consent))
    elif not patient.opposes_other_facilities:
        for consent in active:
            tx.bump(
                Consent,
                consent,
                consent.version_id,
                status="inactive",
                withdrawn_by=tx.ctx.account_id,
                withdrawn_at=tx.now,
            )
            data = consent_data(consent)
            tx.snapshot(RT.CONSENT, consent.id, consent.version_id, patient, "update", data)


def _set_opposition(tx: GuardedTx, patient: Patient, opposes: bool) -> None:
    """The flag the policy reads (care.visible_filter), changed as a new Patient version."""
    if patient.opposes_other_facilities == opposes:
        return
    before = kept_state(tx, patient)
    tx.bump(Patient, patient, patient.version_id, opposes_other_facilities=opposes)
    follow(tx, patient, before)
    full = patient_data(tx, patient, PATIENT_ALL)
    tx.snapshot(RT.PATIENT, patient.id, patient.version_id, patient, "update", full)


# -- consents: the patient's privacy decisions, honoured by the policy ----------------------
def consents_section(pid: uuid.UUID | None) -> Select[Consent]:
    """The statement of a patient's consents, newest first (the fast read sends it ahead)."""
    return select(Consent).where(Consent.patient_id == pid).order_by(Consent.recorded_at.desc())


@guarded(AuditKind.PHI_READ, RT.CONSENT, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[ConsentView]:
    rows, fields = section(tx, patient_id, RT.CONSENT, consents_section(parse_id(patient_id)))
    return [redact(ConsentView, consent_data(r), fields) for r in rows]


@guarded(AuditKind.PHI_READ, RT.CONSENT, targeted=True)
def read(tx: GuardedTx, /, *, consent_id: str) -> ConsentView:
    row, fields = read_one(tx, RT.CONSENT, consent_id)
    return redact(ConsentView, consent_data(row), fields)


@guarded(AuditKind.PHI_CREATE, RT.CONSENT, targeted=True)
def record(tx: GuardedTx, /, *, patient_id: str, kind: str = OPPOSE_OTHER_FACILITIES) -> ConsentView:
    """Record a patient's privacy decision; it takes effect at once, for every actor."""
    if kind not in CONSENT_KINDS:
        raise InvalidInput(f"consent kind must be one of: {', '.join(sorted(CONSENT_KINDS))}")
    # Exclusive: it may change the patient row (the opposition flag), and two decisions
    # of one kind cannot both pass the check below.
    patient = tx.patient_for_write(patient_id, exclusive=True)
    tx.authorize(patient, RT.CONSENT, write=True)
    active = tx.session.scalar(
        select(Consent.id).where(
            Consent.patient_id == patient.id, Consent.kind == kind, Consent.status == "active"
        )
    )
    if active is not None:
        raise Conflict("this patient already has an active consent of this kind")
    consent = Consent(
        id=new_id(),
        patient_id=patient.id,
        facility_id=patient.facility_id,
        kind=kind,
        status="active",
        recorded_by=tx.ctx.account_id,
        recorded_at=tx.now,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(consent)
    tx.session.flush()
    _set_opposition(tx, patient, True)
    tx.reasons.append(f"consent {kind} recorded")
    return written(tx, patient, RT.CONSENT, ConsentView, consent_data(consent), 1, "create")


@guarded(AuditKind.PHI_UPDATE, RT.CONSENT, targeted=True)
def withdraw(tx: GuardedTx, /, *, consent_id: str, expected_version: int) -> ConsentView:
    """Withdraw a decision (kept, status inactive); the restriction ends with the last one."""
    # Exclusive: withdrawing the last one changes the patient row (the opposition flag).
    consent, patient = tx.record_to_change(Consent, consent_id, exclusive=True)
    tx.authorize(patient, RT.CONSENT, write=True)
    if consent.status != "active":
        raise Conflict("this consent is already withdrawn")
    tx.bump(
        Consent,
        consent,
        expected_version,
        status="inactive",
        withdrawn_by=tx.ctx.account_id,
        withdrawn_at=tx.now,
    )
    others = tx.session.scalar(
        select(Consent.id).where(
            Consent.patient_id == patient.id,
            Consent.kind == consent.kind,
            Consent.status == "active",
            Consent.id != consent.id,
        )
    )
    if consent.kind == OPPOSE_OTHER_FACILITIES and others is None:
        _set_opposition(tx, patient, False)
    tx.reasons.append(f"consent {consent.kind} withdrawn")
    data = consent_data(consent)
    return written(tx, patient, RT.CONSENT, ConsentView, data, consent.version_id, "update")
