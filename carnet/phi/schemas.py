"""What the gate returns and accepts: pydantic schemas, never ORM objects; ids are strings.

Every field a role may be refused is optional: the gate leaves it None when the policy
(carnet.access.policy) does not open it to the actor (minimum necessary).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carnet.crypto.blind import normalize_identifier


class Redactable(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    # The fields the actor was allowed to see; the others are None.
    visible: frozenset[str] = frozenset()
    # When the record last changed (FHIR meta.lastUpdated): kept whatever the redaction.
    updated_at: dt.datetime | None = None


class PatientView(Redactable):
    facility_id: str | None = None
    version_id: int | None = None
    ins: str | None = None
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None
    gender: str | None = None
    active: bool | None = None
    designated_physician_id: str | None = None
    opposes_other_facilities: bool | None = None
    merged_into_id: str | None = None  # this duplicate was merged into that record
    replaces: list[str] | None = None  # the duplicates merged into this record

    @field_validator("ins", mode="before")
    @classmethod
    def _ins(cls, value: object) -> object:
        # `_compact_ins`, inline: every Patient view comes here (a read, each search hit).
        return _INS_SEPARATORS.sub("", value).upper() if isinstance(value, str) else value

    address: dict[str, Any] | None = None
    phone: str | None = None
    email: str | None = None
    # The FHIR Patient as received (None: registered in carnet, or not every field is visible),
    # its elements carnet manages following carnet's changes (carnet/patients/received.py).
    received: dict[str, Any] | None = None


class PatientPage(BaseModel):
    items: list[PatientView]
    page: int
    count: int
    has_more: bool


class AppointmentView(Redactable):
    patient_id: str | None = None
    facility_id: str | None = None
    practitioner_id: str | None = None
    location_id: str | None = None
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    status: str | None = None
    cancel_reason: str | None = None
    version_id: int | None = None
    reason: str | None = None


class BedPeriodView(BaseModel):
    bed_id: str
    ward_id: str | None = None
    start: dt.datetime
    end: dt.datetime | None = None


class EncounterView(Redactable):
    patient_id: str | None = None
    facility_id: str | None = None
    kind: str | None = None
    status: str | None = None
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    location_id: str | None = None
    attending_id: str | None = None
    version_id: int | None = None
    # The FHIR Encounter as received (None: opened in carnet, or not every field is visible).
    received: dict[str, Any] | None = None
    bed_id: str | None = None  # the bed held (a finished stay: its last bed)
    beds: list[BedPeriodView] | None = None  # every bed of the stay, with its period, oldest first


class AllergyView(Redactable):
    patient_id: str | None = None
    substance_code: str | None = None
    substance_display: str | None = None
    criticality: str | None = None
    reaction: str | None = None  # what happened (urticaria, anaphylaxis...), free text
    clinical_status: str | None = None
    recorded_by: str | None = None
    version_id: int | None = None
    # The FHIR resource as received (None: not received, or not every field is visible).
    received: dict[str, Any] | None = None


class NoteVersionView(BaseModel):
    version: int
    text: str
    author_id: str
    recorded_at: dt.datetime
    amendment_reason: str | None = None


class NoteView(Redactable):
    patient_id: str | None = None
    encounter_id: str | None = None
    author_id: str | None = None
    kind: str | None = None
    title: str | None = None
    status: str | None = None
    version_id: int | None = None
    versions: list[NoteVersionView] | None = None


class PrescriptionView(Redactable):
    patient_id: str | None = None
    prescriber_id: str | None = None
    medication_code: str | None = None
    medication_display: str | None = None
    substance_code: str | None = None
    dosage_text: str | None = None
    status: str | None = None
    authored_at: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    stop_reason: str | None = None
    allergy_override_reason: str | None = None
    version_id: int | None = None
    warnings: list[str] | None = None
    # The FHIR MedicationRequest as received (imported; None otherwise or not all visible).
    received: dict[str, Any] | None = None


class CoverageView(Redactable):
    patient_id: str | None = None
    kind: str | None = None
    payer: str | None = None
    member_id: str | None = None
    status: str | None = None
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    # The FHIR Coverage as received (imported; None otherwise or not every field visible).
    received: dict[str, Any] | None = None


class CardReadingView(Redactable):
    patient_id: str | None = None
    coverage_id: str | None = None
    read_at: dt.datetime | None = None
    card_serial: str | None = None
    payload: dict[str, Any] | None = None


class CoverageSection(BaseModel):
    coverages: list[CoverageView]
    card_readings: list[CardReadingView]


class InvoiceLineView(BaseModel):
    code: str
    description: str
    amount_cents: int


class PaymentView(BaseModel):
    id: str
    amount_cents: int
    method: str
    received_at: dt.datetime


class InvoiceView(Redactable):
    patient_id: str | None = None
    number: str | None = None
    status: str | None = None
    issued_at: dt.datetime | None = None
    total_cents: int | None = None
    currency: str | None = None
    lines: list[InvoiceLineView] | None = None
    version_id: int | None = None
    paid_cents: int | None = None
    payments: list[PaymentView] | None = None
    encounter_id: str | None = None
    cancel_reason: str | None = None


class ObservationView(Redactable):
    patient_id: str | None = None
    category: str | None = None
    code: str | None = None
    display: str | None = None
    value_number: float | None = None
    unit: str | None = None
    value_text: str | None = None
    effective_at: dt.datetime | None = None
    status: str | None = None
    version_id: int | None = None
    # The FHIR resource as received (None: not received, or not every field is visible).
    received: dict[str, Any] | None = None
    # The order it answers, the laboratory's reference range as printed and its abnormal flag.
    order_id: str | None = None
    reference_range: str | None = None
    interpretation: str | None = None


class ConditionView(Redactable):
    patient_id: str | None = None
    code: str | None = None
    display: str | None = None
    clinical_status: str | None = None
    verification_status: str | None = None
    onset_at: dt.datetime | None = None
    recorded_by: str | None = None
    version_id: int | None = None
    # The FHIR resource as received (None: not received, or not every field is visible).
    received: dict[str, Any] | None = None


class DayAppointment(BaseModel):
    appointment: AppointmentView
    patient: PatientView


class DayInpatient(BaseModel):
    encounter: EncounterView
    patient: PatientView


class DayList(BaseModel):
    day: dt.date
    appointments: list[DayAppointment]
    inpatients: list[DayInpatient]


class VersionView(BaseModel):
    resource_type: str
    resource_id: str
    version_id: int
    recorded_at: dt.datetime
    author_id: str | None
    action: str
    # The snapshot, redacted to the fields the actor may see of this resource type.
    data: dict[str, Any]


class CareTeamView(Redactable):
    """One care relationship of a patient (FHIR CareTeam): a practitioner, why, and when."""

    patient_id: str | None = None
    facility_id: str | None = None
    practitioner_id: str | None = None
    kind: str | None = None  # care_team, referral
    status: str | None = None  # active, inactive
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    version_id: int | None = None  # 1 as made; 2 once ended early (If-Match)
    reason: str | None = None  # why the patient was referred (or the colleague added)


class CareRelationshipInput(BaseModel):
    """A referral, or a colleague added to a patient's care team (Gate.refer_patient,
    Gate.add_care_team_member): the practitioner it opens the chart to, why, and until when."""

    patient_id: str
    practitioner_id: str
    reason: str
    end_at: dt.datetime | None = None  # required: checked by the gate with a clear error


class DiagnosticReportView(Redactable):
    patient_id: str | None = None
    facility_id: str | None = None
    code: str | None = None
    display: str | None = None
    status: str | None = None
    issued_at: dt.datetime | None = None
    conclusion: str | None = None
    performer_id: str | None = None
    result_ids: list[str] | None = None
    version_id: int | None = None
    # The FHIR resource as received (None: not received, or not every field is visible).
    received: dict[str, Any] | None = None
    order_id: str | None = None  # the order it answers (basedOn)


class LabResultsView(BaseModel):
    """Results recorded together and the report grouping them (each redacted as its own read)."""

    observations: list[ObservationView]
    report: DiagnosticReportView | None = None


class ServiceRequestView(Redactable):
    """A lab order: the test asked for, by whom, how urgently, and where it stands."""

    patient_id: str | None = None
    facility_id: str | None = None
    encounter_id: str | None = None
    requester_id: str | None = None
    placer_number: str | None = None
    category: str | None = None
    code: str | None = None
    display: str | None = None
    priority: str | None = None
    status: str | None = None
    authored_at: dt.datetime | None = None
    note: str | None = None
    version_id: int | None = None
    # The FHIR ServiceRequest as received (imported; None otherwise or not all visible).
    received: dict[str, Any] | None = None


class ConsentView(Redactable):
    patient_id: str | None = None
    facility_id: str | None = None
    kind: str | None = None
    status: str | None = None
    recorded_by: str | None = None
    recorded_at: dt.datetime | None = None
    withdrawn_by: str | None = None
    withdrawn_at: dt.datetime | None = None
    version_id: int | None = None


class ProvenanceView(BaseModel):
    """Who wrote which version of a resource, and when (FHIR Provenance); no content."""

    id: str
    target_type: str
    target_id: str
    target_version: int
    patient_id: str
    recorded_at: dt.datetime
    action: str  # create, update, delete
    author_account_id: str | None
    author_practitioner_id: str | None


class BreakGlassGrant(BaseModel):
    id: str
    patient_id: str
    reason_code: str
    started_at: dt.datetime
    expires_at: dt.datetime


# -- inputs ---------------------------------------------------------------------------------
def _text(value: str, name: str, max_len: int) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{name} is required")
    if len(value) > max_len:
        raise ValueError(f"{name} is too long (at most {max_len} characters)")
    return value


def _compact_ins(value: object) -> object:
    """An INS may be typed with spaces, dots or dashes: '2 85 05 75 123 456'."""
    return normalize_identifier(value) if isinstance(value, str) else value


# `normalize_identifier`'s pattern, compiled (`re.sub` looks it up in re's cache on each call;
# the same text: tests/phi/test_schemas_ins.py).
_INS_SEPARATORS = re.compile(r"[\s.\-]")


class PatientInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    facility_id: str
    family: str = Field(min_length=1, max_length=100)
    given: str = Field(min_length=1, max_length=100)
    birth_date: dt.date
    gender: str = Field(pattern="^(male|female|other|unknown)$")
    ins: str | None = Field(default=None, pattern=r"^[12][0-9]{12}([0-9]{2})?$")
    address: dict[str, str] | None = None
    phone: str | None = Field(default=None, max_length=30)
    email: str | None = Field(default=None, max_length=200)
    designated_physician_id: str | None = None
    opposes_other_facilities: bool = False
    # The FHIR Patient as received (a FHIR create, a transaction Bundle): kept whole.
    received: dict[str, Any] | None = None

    @field_validator("family", "given")
    @classmethod
    def _names(cls, value: str) -> str:
        return _text(value, "a name", 100)

    @field_validator("ins", mode="before")
    @classmethod
    def _ins(cls, value: object) -> object:
        return _compact_ins(value)


class PatientChanges(BaseModel):
    """Fields to change; those left None stay as they are."""

    model_config = ConfigDict(extra="forbid")

    family: str | None = Field(default=None, min_length=1, max_length=100)
    given: str | None = Field(default=None, min_length=1, max_length=100)
    birth_date: dt.date | None = None
    gender: str | None = Field(default=None, pattern="^(male|female|other|unknown)$")
    ins: str | None = Field(default=None, pattern=r"^[12][0-9]{12}([0-9]{2})?$")
    address: dict[str, str] | None = None
    phone: str | None = Field(default=None, max_length=30)
    email: str | None = Field(default=None, max_length=200)
    designated_physician_id: str | None = None
    opposes_other_facilities: bool | None = None
    # A FHIR update's whole body: it replaces the Patient kept as received.
    received: dict[str, Any] | None = None

    @field_validator("ins", mode="before")
    @classmethod
    def _ins(cls, value: object) -> object:
        return _compact_ins(value)


class AppointmentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str
    practitioner_id: str
    start_at: dt.datetime
    end_at: dt.datetime
    location_id: str | None = None
    reason: str | None = Field(default=None, max_length=500)


class PrescriptionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str
    medication_code: str = Field(min_length=1, max_length=40)
    medication_display: str = Field(min_length=1, max_length=200)
    substance_code: str = Field(min_length=1, max_length=40)
    dosage_text: str = Field(min_length=1, max_length=500)
    valid_until: dt.datetime | None = None
    encounter_id: str | None = None
    # Needed (and stored) when the patient has an active allergy to the same substance.
    allergy_override_reason: str | None = Field(default=None, max_length=500)


class CardReadingInput(BaseModel):
    """What the health-card reader returned (carte Vitale): the card and the coverage it proves."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    card_serial: str = Field(pattern=r"^[0-9A-Za-z]{4,20}$")
    kind: str = Field(default="AMO", pattern="^(AMO|AMC)$")
    payer: str = Field(min_length=2, max_length=200)
    member_id: str = Field(pattern=r"^[0-9A-Za-z]{5,30}$")
    rights_start: dt.date
    rights_end: dt.date | None = None


class PaymentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    invoice_id: str
    expected_version: int
    amount_cents: int = Field(gt=0, le=100_000_000)
    method: str = Field(pattern="^(card|cash|cheque|transfer|insurer)$")


class InvoiceLineInput(BaseModel):
    """One billed act: its code (CCAM / NGAP), what it is, and a positive amount in cents."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=20)
    description: str = Field(min_length=1, max_length=200)
    amount_cents: int = Field(gt=0, le=100_000_000)


class InvoiceInput(BaseModel):
    """An invoice to issue (or to keep as a draft): the patient, the stay it bills (optional,
    the patient's own) and its lines; the number and the total are the gate's."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    encounter_id: str | None = None
    lines: list[InvoiceLineInput] = Field(min_length=1, max_length=200)
    currency: str = Field(default="EUR", pattern="^[A-Z]{3}$")
    status: str = Field(default="issued", pattern="^(draft|issued)$")


class ScheduleEntry(BaseModel):
    """One booked slot of a practitioner's calendar: when, how long, its status and version (to
    move or cancel it). Never who it is for: that is asked one slot at a time
    (`Gate.reveal_appointment_patient`), and each answer is one patient exposed."""

    id: str
    start_at: dt.datetime
    end_at: dt.datetime
    status: str
    version_id: int


class Schedule(BaseModel):
    practitioner_id: str
    day_from: dt.date
    day_to: dt.date
    entries: list[ScheduleEntry]


class AllergyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str
    # An ATC code (what carnet's medication checks read), or a code of any other system (SNOMED
    # CT, RxNorm...): kept, shown, and said to be unchecked when a prescription is checked.
    substance_code: str = Field(min_length=1, max_length=40)
    substance_display: str = Field(min_length=1, max_length=200)
    criticality: str = Field(pattern="^(low|high|unable-to-assess)$")
    clinical_status: str = Field(default="active", pattern="^(active|inactive|resolved)$")
    # The FHIR resource as received, kept whole (every coding with its system, reactions...).
    received: dict[str, Any] | None = None
    reaction: str | None = Field(default=None, max_length=200)


class EncounterInput(BaseModel):
    """An admission (or a visit): where the patient is, who is responsible, since when."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    kind: str = Field(pattern="^(inpatient|outpatient|emergency)$")
    start_at: dt.datetime | None = None  # now when not given
    location_id: str | None = None  # the ward (or a bed: then its ward)
    attending_id: str | None = None
    bed_id: str | None = None  # a free bed of the ward; none: the stay waits for a bed


class ReceivedEncounterInput(BaseModel):
    """Another system's visit or stay that is not an admission here (finished, planned,
    cancelled...): kept whole as received; its columns are for lists and policy only."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    kind: str = Field(pattern="^(inpatient|outpatient|emergency)$")
    status: str = Field(
        pattern="^(planned|arrived|triaged|onleave|finished|cancelled|entered-in-error|unknown)$"
    )
    start_at: dt.datetime
    end_at: dt.datetime | None = None
    received: dict[str, Any]


class ReceivedPrescriptionInput(BaseModel):
    """A prescription written in another system, in its own code system (RxNorm, SNOMED CT...),
    its prescriber named in the resource: kept whole as received. `substance_code` is its ATC
    coding when it has one (what carnet's checks read), else empty (nothing to check)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    medication_code: str = Field(max_length=40)
    medication_display: str = Field(min_length=1, max_length=200)
    substance_code: str = Field(default="", max_length=40)
    dosage_text: str = Field(default="", max_length=500)
    status: str = Field(
        pattern="^(active|on-hold|cancelled|completed|entered-in-error|stopped|draft|unknown)$"
    )
    authored_at: dt.datetime | None = None  # when it reached carnet, if the resource does not say
    valid_until: dt.datetime | None = None
    encounter_id: str | None = None
    allergy_override_reason: str | None = Field(default=None, max_length=500)
    received: dict[str, Any]


class ObservationInput(BaseModel):
    """A vital sign or a lab result: a LOINC code and a value (a number with its unit, or text)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    # The FHIR observation-category codes (R4).
    category: str = Field(
        pattern="^(vital-signs|laboratory|social-history|imaging|procedure|survey|exam|therapy|activity)$"
    )
    code: str = Field(min_length=1, max_length=20)
    display: str = Field(min_length=1, max_length=200)
    value_number: float | None = None
    unit: str | None = Field(default=None, max_length=20)
    value_text: str | None = Field(default=None, max_length=200)
    effective_at: dt.datetime
    status: str = Field(default="final", pattern="^(preliminary|final|amended|corrected)$")
    encounter_id: str | None = None
    # The FHIR resource as received, kept whole; its value may be of a type the columns do not
    # hold (valueCodeableConcept, components...).
    received: dict[str, Any] | None = None
    # The lab order it answers (the patient's own), the laboratory's reference range as printed
    # ("3.5-5.0", "<2.0") and its abnormal flag (HL7 table 0078: L, H, LL, HH, N, A, AA...).
    order_id: str | None = None
    reference_range: str | None = Field(default=None, max_length=60)
    interpretation: str | None = Field(default=None, pattern=r"^[A-Za-z<>]{1,10}$")


# FHIR Condition clinicalStatus and verificationStatus codes (R4).
CONDITION_CLINICAL_STATUSES = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")
CONDITION_VERIFICATION_STATUSES = (
    "confirmed",
    "provisional",
    "differential",
    "unconfirmed",
    "refuted",
    "entered-in-error",
)
# An ICD-10 code: a letter, two digits, an optional subdivision (E11.9, I10, or E119 as written
# in French CIM-10 lists), an optional dagger or asterisk.
ICD10_CODE = r"^[A-Z][0-9]{2}(\.?[0-9A-Z]{1,4})?[+*]?$"


class ConditionInput(BaseModel):
    """A problem or diagnosis of a patient, coded in ICD-10."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    # ICD-10 when received in no system carnet knows better; any system's code when the
    # resource is kept whole (`received`, its system with it).
    code: str = Field(pattern=r"^\S{1,20}$")
    display: str = Field(min_length=1, max_length=200)
    clinical_status: str = Field(
        default="active", pattern="^(" + "|".join(CONDITION_CLINICAL_STATUSES) + ")$"
    )
    # A problem is not recorded already in error, nor refuted: those are changes of one.
    verification_status: str = Field(
        default="confirmed", pattern="^(confirmed|provisional|differential|unconfirmed)$"
    )
    onset_at: dt.datetime | None = None
    received: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _icd10_unless_received(self) -> ConditionInput:
        if self.received is None and re.fullmatch(ICD10_CODE, self.code) is None:
            raise ValueError("code: an ICD-10 code")
        return self


class DiagnosticReportInput(BaseModel):
    """A lab report grouping Observations of the same patient (`result_ids`)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    code: str = Field(min_length=1, max_length=20)
    display: str = Field(min_length=1, max_length=200)
    status: str = Field(default="final", pattern="^(registered|partial|preliminary|final|amended|corrected)$")
    issued_at: dt.datetime
    conclusion: str | None = Field(default=None, max_length=10_000)
    # Required by record_diagnostic_report; record_observations fills it with its own results.
    result_ids: list[str] = Field(default_factory=list, max_length=200)
    order_id: str | None = None  # the lab order it answers (the patient's own)
    # The FHIR resource as received, kept whole (its performer, effective time, presentedForm...).
    received: dict[str, Any] | None = None


# FHIR request-priority codes (R4), and the statuses carnet's orders take.
ORDER_PRIORITIES = ("routine", "urgent", "asap", "stat")
ORDER_STATUSES = ("active", "completed", "revoked", "entered-in-error")


class ServiceRequestInput(BaseModel):
    """A lab order: the test (LOINC) for a patient, its priority and the clinical question."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str
    code: str = Field(min_length=1, max_length=20, pattern=r"^[0-9A-Za-z.\-]+$")
    display: str = Field(min_length=1, max_length=200)
    priority: str = Field(default="routine", pattern="^(routine|urgent|asap|stat)$")
    note: str | None = Field(default=None, max_length=2000)
    encounter_id: str | None = None


class ExportJobView(BaseModel):
    """An asynchronous export's state (no patient data): pending (approval), running,
    completed, failed, downloaded."""

    id: str
    export_id: str
    status: str
    created_at: dt.datetime
    completed_at: dt.datetime | None = None
    patient_count: int | None = None
    failure: str | None = None
    request_url: str | None = None
    # A multi-type Bulk Data job: the files not yet downloaded, {type: lines}.
    outputs: dict[str, int] | None = None


class PatientExport(BaseModel):
    """An export's patients and its watermark: which request, why, who asked and who approved."""

    export_id: str
    purpose: str
    requested_by: str
    approved_by: str
    exported_at: dt.datetime
    items: list[PatientView]


class BulkExport(BaseModel):
    """A Bulk Data export's content, per FHIR type, as the gate read it (each item the view a
    read of that record gives), its watermark, and what it could not hold whole."""

    export_id: str
    resources: dict[str, list[Any]]
    warnings: list[str]


# -- the day's work per role (front desk arrivals, billing worklist, ward board) ----------
class Arrival(BaseModel):
    """One appointment of today on the front desk's arrivals list: when, with whom, its status
    and version (to check the patient in), and who it is for (name, birth date, sex only) when
    it is among the appointments nearest now (None: a slot, named closer to its time)."""

    appointment: AppointmentView
    patient: PatientView | None
    practitioner_name: str


class Arrivals(BaseModel):
    day: dt.date
    window_start: dt.datetime
    window_end: dt.datetime
    entries: list[Arrival]
    more: bool  # the window held more appointments than the list shows


class UnpaidInvoice(BaseModel):
    invoice: InvoiceView
    patient: PatientView


class BillingWorklist(BaseModel):
    """Issued invoices not yet paid, oldest first, one page at a time; no clinical data."""

    page: int
    items: list[UnpaidInvoice]
    more: bool


class WardStay(BaseModel):
    encounter: EncounterView
    patient: PatientView
    attending_name: str
    bed_since: dt.datetime | None = None  # in this bed since (None: no bed yet)


class BoardBed(BaseModel):
    """A bed of the board: free, or occupied (by a stay shown, or one the nurse does not see)."""

    id: str
    name: str
    occupied: bool
    stay: WardStay | None = None


class BoardRoom(BaseModel):
    id: str | None  # None: the beds hung on the ward itself
    name: str
    beds: list[BoardBed]


class Ward(BaseModel):
    id: str
    name: str
    stays: list[WardStay]  # every stay shown, in a bed or waiting for one
    rooms: list[BoardRoom] = Field(default_factory=list)
    waiting: list[WardStay] = Field(default_factory=list)  # in the ward, no bed yet

    @property
    def free_beds(self) -> int:
        return sum(1 for r in self.rooms for b in r.beds if not b.occupied)

    @property
    def bed_count(self) -> int:
        return sum(len(r.beds) for r in self.rooms)


class FreeBed(BaseModel):
    """A free bed to admit or transfer to (no patient: what stays in progress leave free)."""

    id: str
    name: str
    room: str
    ward_id: str
    ward_name: str


class WardBoard(BaseModel):
    """The wards a nurse works today and the stays in progress in each."""

    wards: list[Ward]


class PractitionerWeek(BaseModel):
    """One practitioner's row of the calendar grid: their booked slots (no patient)."""

    practitioner_id: str
    name: str
    entries: list[ScheduleEntry]


class CalendarGrid(BaseModel):
    day_from: dt.date
    day_to: dt.date
    rows: list[PractitionerWeek]
