"""THE GATE: one object per request; the only way to read or write patient data.

`Gate` is the facade other code calls (`gate.read_patient(patient_id=...)`): each public method
is one domain operation bound to the one path of the gate kernel (carnet.phi.kernel), which
authorizes, scopes, audits and counts exposures, fail closed. The operations themselves live
with their domain: carnet/patients, scheduling, records, prescriptions, coverage, billing
(operations.py and neighbours), exports and break-the-glass in carnet/phi. docs/ARCHITECTURE.md
maps which folder owns which rule.

A refusal rolls everything back and is audited in its own transaction; a forbidden record
answers exactly like a missing one (NotFound). Any failure returns nothing (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from carnet.access.policy import WRITE_PERMISSION
from carnet.audit.interfaces import AuditKind
from carnet.billing import operations as billing
from carnet.billing import printing as billing_prints
from carnet.coverage import operations as coverage
from carnet.identity.authenticate import RequestContext
from carnet.interfaces import operation as interfaces
from carnet.interventions import administering
from carnet.interventions import operations as interventions
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.org.directory import keep_entries
from carnet.patients import merge as identity
from carnet.patients import operations as patients
from carnet.phi import breakglass, exports, fastpath, fastpath_search, validation
from carnet.phi.exports import BULK_TYPES, EXPORT_FILE_WINDOW, EXPORT_JOB_TIMEOUT, STUCK_EXPORT
from carnet.phi.grouped import GroupFailed, grouped
from carnet.phi.kernel import RT, GateCore, GuardedTx, Refused, guarded, operation
from carnet.phi.schemas import PatientView
from carnet.prescriptions import operations as prescriptions
from carnet.prescriptions import printing as prescription_prints
from carnet.prescriptions.rules import AllergyWarning
from carnet.records import care_teams, consents, orders, provenance, stays
from carnet.records import operations as records
from carnet.records import printing as letters
from carnet.records.consents import OPPOSE_OTHER_FACILITIES
from carnet.runtime import Runtime
from carnet.scheduling import operations as scheduling

# Imported from here by the presentation layers and the sweeper.
__all__ = [
    "BULK_TYPES",
    "EXPORT_FILE_WINDOW",
    "EXPORT_JOB_TIMEOUT",
    "OPPOSE_OTHER_FACILITIES",
    "STUCK_EXPORT",
    "TRANSACTION_LIMIT",
    "AllergyWarning",
    "Gate",
    "GroupFailed",
    "TransactionStep",
    "public_operations",
]

# The hottest read gets the kernel's fast variant on PostgreSQL (carnet/phi/fastpath.py).
fastpath.offer(patients.read, reads_columns_only=True)  # `read` and the views it calls
# So do the reads of one patient's chart section (FHIR searches by patient, $everything), each
# with the statement its body reads its rows with (carnet/phi/fastpath_search.py).
for _body, _statement in (
    (records.list_notes, records.notes_section),
    (records.list_observations, records.observations_section),
    (records.list_conditions, records.conditions_section),
    (records.list_diagnostic_reports, records.reports_section),
    (orders.list_for_patient, orders.orders_section),
    (stays.list_for_patient, stays.encounters_section),
    (consents.list_for_patient, consents.consents_section),
    (care_teams.list_for_patient, care_teams.care_team_section),
    (prescriptions.list_allergies, prescriptions.allergies_section),
    (prescriptions.list_for_patient, prescriptions.prescriptions_section),
    (scheduling.list_for_patient, scheduling.appointments_section),
    (billing.list_for_patient, billing.invoices_section),
    (coverage.list_for_patient, coverage.coverages_section),
    (interventions.list_immunizations, interventions.section_of(RT.IMMUNIZATION)),
    (interventions.list_procedures, interventions.section_of(RT.PROCEDURE)),
    (interventions.list_administrations, interventions.section_of(RT.MEDICATION_ADMINISTRATION)),
    (interventions.list_statements, interventions.section_of(RT.MEDICATION_STATEMENT)),
):
    fastpath_search.offer_section(_body, _statement)
# And the Patient search (identifier, family + birth date, a name among one's own patients).
fastpath_search.offer_search(patients.search)

# A transaction step: (the name of a write operation, its keyword arguments built from the
# results of the steps before it).
TransactionStep = tuple[str, Callable[[list[Any]], dict[str, Any]]]
TRANSACTION_LIMIT = 500
TRANSACTION_OPERATIONS = frozenset(
    {
        "register_patient",
        "update_patient",
        "book_appointment",
        "amend_appointment",
        "cancel_appointment",
        "check_in",
        "write_note",
        "amend_note",
        "prescribe",
        "stop_prescription",
        "record_allergy",
        "deactivate_patient",
        "record_consent",
        "withdraw_consent",
        "refer_patient",
        "add_care_team_member",
        "end_care_relationship",
        "admit_patient",
        "record_encounter",
        "record_prescription",
        "transfer_encounter",
        "discharge_encounter",
        "mark_encounter_entered_in_error",
        "record_observation",
        "amend_observation",
        "record_diagnostic_report",
        "amend_diagnostic_report",
        "record_observations",
        "order_test",
        "revoke_order",
        "record_condition",
        "amend_condition",
        "issue_invoice",
        "finalize_invoice",
        "cancel_invoice",
        "record_payment",
        "record_immunization",
        "record_procedure",
        "record_medication_administration",
        "record_medication_statement",
        "record_specimen",
        "keep_directory_entries",
    }
)


@guarded(AuditKind.DIRECTORY_KEPT, RT.PATIENT, targeted=False)
def _keep_directory(
    tx: GuardedTx,
    /,
    *,
    resources: list[dict[str, Any]],
    rewrite: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]],
    names: Callable[[int], list[str]],
) -> list[tuple[str, bool]]:
    """Another system's directory entries of a transaction Bundle, matched or kept as its first
    step: in the Bundle's one transaction, so a Bundle refused keeps none (no patient data: the
    entries are listed in the transaction's audit event)."""
    if not tx.ctx.permissions & frozenset(WRITE_PERMISSION.values()):
        # Directory entries come with patient data written: an account that writes none keeps none.
        raise Refused("keeping another system's directory entries goes with writing patient data")
    kept = keep_entries(tx.session, tx.ctx, resources=resources, rewrite=rewrite, names=names)
    tx.resource_ids.extend(reference.partition("/")[2] for reference, _created in kept)
    return kept


@guarded(AuditKind.PHI_TRANSACTION, RT.PATIENT, targeted=False)
def _run_transaction(tx: GuardedTx, /, *, steps: Sequence[TransactionStep]) -> list[Any]:
    """All or nothing (a FHIR transaction Bundle): each step names a write operation and
    builds its arguments from the results so far, so references between the bundle's
    entries resolve. The steps run in ONE guarded transaction, one audit event; any
    refusal or error rolls back every step and names the entry that failed."""
    if not 1 <= len(steps) <= TRANSACTION_LIMIT:
        raise InvalidInput(f"a transaction holds 1 to {TRANSACTION_LIMIT} entries")
    tx.query = f"transaction;entries={len(steps)}"
    results: list[Any] = []
    for number, (name, arguments) in enumerate(steps, start=1):
        if name not in TRANSACTION_OPERATIONS:
            raise InvalidInput(f"entry {number}: {name} cannot be part of a transaction")
        step = getattr(Gate, name)
        body = step.__wrapped__
        # Each step is checked (token scopes) as the write it is, not as a "transaction".
        tx.kind = step.__gate_audit_kind__
        try:
            results.append(body(tx, **arguments(results)))
        except Refused as exc:
            raise Refused(f"entry {number}: {exc.reason}", exc.patient_ids) from None
        except (InvalidInput, Conflict, NotFound) as exc:
            raise type(exc)(f"entry {number}: {exc}") from None
        finally:
            tx.kind = AuditKind.PHI_TRANSACTION
    return results


def read_patient_of_session(
    runtime: Runtime, *, token: str, context: RequestContext, patient_id: str
) -> PatientView | None:
    """`Gate(runtime, <the session's actor>).read_patient(patient_id=...)` for a session cookie,
    the session's lookup in the read's first round trip (carnet.phi.fastpath.session_read). None
    when that variant declines, having done nothing: the caller then resolves the session
    (`carnet.identity.dependencies.current_actor`) and reads through `Gate` as usual."""
    done, view = fastpath.session_read(
        runtime, Gate, patients.read, token=token, context=context, kwargs={"patient_id": patient_id}
    )
    return cast(PatientView, view) if done else None


class Gate(GateCore):
    """The gate for one request of one actor: every public method is a guarded operation."""

    # -- patients: registration, identity, search (carnet/patients/operations.py)
    read_patient = operation(patients.read)
    search_patients = operation(patients.search)
    register_patient = operation(patients.register)
    update_patient = operation(patients.update)
    deactivate_patient = operation(patients.deactivate)

    # -- identity vigilance: merge and its reversal (carnet/patients/merge.py)
    merge_patients = operation(identity.merge)
    unmerge_patients = operation(identity.unmerge)

    # -- scheduling: appointments, calendars, the day list (carnet/scheduling/operations.py)
    day_list = operation(scheduling.day_list)
    list_appointments = operation(scheduling.list_for_patient)
    book_appointment = operation(scheduling.book)
    amend_appointment = operation(scheduling.move)
    cancel_appointment = operation(scheduling.cancel)
    practitioner_schedule = operation(scheduling.practitioner_schedule)
    reveal_appointment_patient = operation(scheduling.reveal_patient)
    read_appointment = operation(scheduling.read)
    calendar_grid = operation(scheduling.calendar_grid)
    arrivals = operation(scheduling.arrivals)
    check_in = operation(scheduling.check_in)

    # -- records: notes, observations, lab reports, conditions (carnet/records/operations.py)
    list_notes = operation(records.list_notes)
    list_observations = operation(records.list_observations)
    list_conditions = operation(records.list_conditions)
    write_note = operation(records.write_note)
    amend_note = operation(records.amend_note)
    record_condition = operation(records.record_condition)
    amend_condition = operation(records.amend_condition)
    record_observation = operation(records.record_observation)
    amend_observation = operation(records.amend_observation)
    record_diagnostic_report = operation(records.record_diagnostic_report)
    amend_diagnostic_report = operation(records.amend_diagnostic_report)
    read_note = operation(records.read_note)
    read_observation = operation(records.read_observation)
    read_condition = operation(records.read_condition)
    list_diagnostic_reports = operation(records.list_diagnostic_reports)
    read_diagnostic_report = operation(records.read_diagnostic_report)
    record_observations = operation(records.record_observations)

    # -- lab orders (ServiceRequest), which results answer (carnet/records/orders.py)
    list_orders = operation(orders.list_for_patient)
    read_order = operation(orders.read)
    order_test = operation(orders.order_test)
    revoke_order = operation(orders.revoke)

    # -- stays (encounters) (carnet/records/stays.py)
    admit_patient = operation(stays.admit)
    record_encounter = operation(stays.record_encounter)
    transfer_encounter = operation(stays.transfer)
    discharge_encounter = operation(stays.discharge)
    mark_encounter_entered_in_error = operation(stays.mark_entered_in_error)
    read_encounter = operation(stays.read)
    list_encounters = operation(stays.list_for_patient)
    stays_worklist = operation(stays.worklist)
    ward_board = operation(stays.ward_board)
    free_beds = operation(stays.free_beds)

    # -- consents (carnet/records/consents.py)
    list_consents = operation(consents.list_for_patient)
    read_consent = operation(consents.read)
    record_consent = operation(consents.record)
    withdraw_consent = operation(consents.withdraw)

    # -- care teams and referrals (carnet/records/care_teams.py)
    list_care_team = operation(care_teams.list_for_patient)
    care_team_worklist = operation(care_teams.worklist)
    read_care_team = operation(care_teams.read)
    refer_patient = operation(care_teams.refer)
    add_care_team_member = operation(care_teams.add_member)
    end_care_relationship = operation(care_teams.end)

    # -- history and provenance (carnet/records/provenance.py)
    history = operation(provenance.history)
    list_provenance = operation(provenance.list_for_target)
    list_patient_provenance = operation(provenance.list_for_patient)
    patient_history = operation(provenance.history_of_patient)
    check_write = operation(validation.check_write)
    read_provenance = operation(provenance.read)

    # -- prescriptions and allergies (carnet/prescriptions/operations.py)
    list_allergies = operation(prescriptions.list_allergies)
    list_prescriptions = operation(prescriptions.list_for_patient)
    prescribe = operation(prescriptions.prescribe)
    record_prescription = operation(prescriptions.record_prescription)
    stop_prescription = operation(prescriptions.stop)
    hold_prescription = operation(prescriptions.hold)
    resume_prescription = operation(prescriptions.resume)
    renew_prescription = operation(prescriptions.renew)
    record_allergy = operation(prescriptions.record_allergy)
    read_prescription = operation(prescriptions.read)
    read_allergy = operation(prescriptions.read_allergy)

    # -- interventions: immunizations, procedures, medications given or taken, each kept as
    # received (carnet/interventions/operations.py)
    list_immunizations = operation(interventions.list_immunizations)
    read_immunization = operation(interventions.read_immunization)
    record_immunization = operation(interventions.record_immunization)
    list_procedures = operation(interventions.list_procedures)
    read_procedure = operation(interventions.read_procedure)
    record_procedure = operation(interventions.record_procedure)
    list_medication_administrations = operation(interventions.list_administrations)
    read_medication_administration = operation(interventions.read_administration)
    record_medication_administration = operation(interventions.record_administration)
    # The nurse's administration record: a dose of an active prescription given or not, from
    # the chart (carnet/interventions/administering.py).
    administer_prescription = operation(administering.administer)
    list_medication_statements = operation(interventions.list_statements)
    read_medication_statement = operation(interventions.read_statement)
    record_medication_statement = operation(interventions.record_statement)
    list_specimens = operation(interventions.list_specimens)
    read_specimen = operation(interventions.read_specimen)
    record_specimen = operation(interventions.record_specimen)

    # -- coverage and health cards (carnet/coverage/operations.py)
    list_coverage = operation(coverage.list_for_patient)
    record_card_reading = operation(coverage.record_card_reading)

    # -- billing: invoices and payments (carnet/billing/operations.py)
    list_invoices = operation(billing.list_for_patient)
    record_payment = operation(billing.record_payment)
    issue_invoice = operation(billing.issue)
    finalize_invoice = operation(billing.finalize)
    cancel_invoice = operation(billing.cancel)
    read_invoice = operation(billing.read)
    read_payment = operation(billing.read_payment)
    billing_worklist = operation(billing.unpaid)

    # -- printed documents: watermarked PDF, audited, counted (each domain's printing.py)
    print_prescription = operation(prescription_prints.print_prescription)
    print_invoice = operation(billing_prints.print_invoice)
    print_receipt = operation(billing_prints.print_receipt)
    print_discharge_letter = operation(letters.print_discharge_letter)

    # -- bulk export (carnet/phi/exports.py)
    export = operation(exports.export)
    queue_export = operation(exports.queue_export)
    kick_off_export = operation(exports.kick_off_export)
    start_export_job = operation(exports.start_export_job)
    run_export_job = operation(exports.run_export_job)
    abandon_export_job = operation(exports.abandon_export_job)
    export_job = operation(exports.export_job)
    download_export = operation(exports.download_export)
    run_bulk_export_job = operation(exports.run_bulk_export_job)
    download_export_file = operation(exports.download_export_file)

    # -- break-the-glass (carnet/phi/breakglass.py)
    break_glass = operation(breakglass.break_glass)

    # -- a FHIR transaction Bundle: several writes, one transaction, one audit event
    run_transaction = operation(_run_transaction)
    keep_directory_entries = operation(_keep_directory)

    # -- an HL7 v2 message of a registered interface, all or nothing (carnet/interfaces/operation.py)
    apply_hl7_message = operation(interfaces.apply_message)
    apply_hl7_merge = operation(interfaces.apply_merge_message)
    # Messages of one interface arriving together: one transaction, a savepoint and an audit
    # event each, one commit (carnet/phi/grouped.py).
    apply_hl7_messages = grouped(interfaces.apply_message, interfaces.prepare_group)


def public_operations() -> dict[str, AuditKind]:
    """Every public Gate method and the audit kind it writes (the meta-test checks them all)."""
    found: dict[str, AuditKind] = {}
    for name in dir(Gate):
        if name.startswith("_"):
            continue
        member = getattr(Gate, name)
        if callable(member):
            found[name] = getattr(member, "__gate_audit_kind__", None)  # type: ignore[assignment]
    return found
