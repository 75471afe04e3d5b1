"""The clinician's screens: my day, patient search, the chart, notes, prescriptions and
break-the-glass. Every read and write goes through the gate (carnet.phi.gate.Gate)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from carnet.access import directory
from carnet.access.actor import Actor
from carnet.access.policy import CARE_TEAM_MAX_DURATION, SEARCH_MAX_COUNT, BreakGlassReason
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.authenticate import Authenticator
from carnet.identity.dependencies import runtime_of
from carnet.interventions.schemas import NOT_GIVEN_REASONS, InterventionView
from carnet.kernel import clock, localtime
from carnet.kernel.errors import Conflict, InvalidInput, NotFound, StepUpRequired
from carnet.phi.gate import AllergyWarning, Gate
from carnet.phi.schemas import (
    CONDITION_CLINICAL_STATUSES,
    ICD10_CODE,
    CareRelationshipInput,
    ConditionInput,
    PatientPage,
    PrescriptionInput,
)
from carnet.prescriptions import catalogue
from carnet.records import results
from carnet.web import apps, choices
from carnet.web.rendering import language_of, render
from carnet.web.routing import WebActor, WebRoute, error_page, redirect, refuse

router = APIRouter(route_class=WebRoute, include_in_schema=False)

GLASS_COOKIE = "carnet_glass"
CLINICAL_ROLES = frozenset({Role.PHYSICIAN, Role.NURSE})
# The chart sections each role's policy opens (asking for others would only log refusals).
SECTIONS: dict[Role, tuple[str, ...]] = {
    Role.PHYSICIAN: (
        "allergies",
        "stays",
        "conditions",
        "results",
        "orders",
        "notes",
        "prescriptions",
        "coverage",
        "appointments",
        "care_team",
    ),
    Role.NURSE: (
        "allergies",
        "stays",
        "conditions",
        "results",
        "orders",
        "notes",
        "prescriptions",
        "appointments",
        "care_team",
    ),
    Role.FRONT_DESK: ("appointments", "coverage"),
    Role.BILLING: ("coverage", "invoices"),
}
NOTE_KINDS = (
    ("11506-3", "Progress note"),
    ("34117-2", "History and physical"),
    ("18842-5", "Discharge summary"),
)

# A problem is recorded confirmed, provisional, differential or unconfirmed; refuted and
# entered-in-error are changes of one.
NEW_VERIFICATION_STATUSES = ("confirmed", "provisional", "differential", "unconfirmed")


def gate_of(request: Request, actor: Actor) -> Gate:
    return Gate(runtime_of(request), actor)


def glass_until(request: Request, patient_id: str) -> dt.datetime | None:
    """When this browser's break-the-glass on this patient ends (display only: the gate decides)."""
    value = request.cookies.get(GLASS_COOKIE, "")
    pid, _, until = value.partition("|")
    if pid != patient_id or not until:
        return None
    try:
        end = dt.datetime.fromisoformat(until)
    except ValueError:
        return None
    return end if end > clock.now() else None


def sections_for(actor: Actor) -> tuple[str, ...]:
    wanted: list[str] = []
    for role in actor.roles:
        for name in SECTIONS.get(role, ()):
            if name not in wanted:
                wanted.append(name)
    return tuple(wanted)


@router.get("/day")
def my_day(request: Request, actor: WebActor, day: dt.date | None = None) -> Response:
    listing = gate_of(request, actor).day_list(day=day)
    return render(request, "clinician/day.html", {"actor": actor, "listing": listing})


# Identifiers, names and birth dates never travel in a URL (browser history, proxy logs,
# Referer): the search is a POST form, protected by the CSRF token like every other form.
SEARCH_FIELDS = ("identifier", "family", "given", "birth_date")


@router.get("/patients")
def search_page(request: Request, actor: WebActor) -> Response:
    """The empty search form. An old link or bookmark with identifiers in its query is not run:
    it is sent back to the bare form, which does not echo them."""
    if any(name in request.query_params for name in (*SEARCH_FIELDS, "page")):
        return redirect("/patients?moved=1")
    return _search_response(request, actor, identifier="", family="", given="", birth_date="", page=1)


@router.post("/patients")
def search(
    request: Request,
    actor: WebActor,
    identifier: Annotated[str, Form(max_length=20)] = "",
    family: Annotated[str, Form(max_length=100)] = "",
    given: Annotated[str, Form(max_length=100)] = "",
    birth_date: Annotated[str, Form(max_length=10)] = "",
    page: Annotated[int, Form(ge=1, le=1000)] = 1,
) -> Response:
    return _search_response(
        request, actor, identifier=identifier, family=family, given=given, birth_date=birth_date, page=page
    )


def _search_response(
    request: Request,
    actor: Actor,
    *,
    identifier: str,
    family: str,
    given: str,
    birth_date: str,
    page: int,
) -> Response:
    asked = any(v.strip() for v in (identifier, family, given, birth_date))
    result: PatientPage | None = None
    problem: str | None = None
    if asked:
        try:
            born = dt.date.fromisoformat(birth_date) if birth_date.strip() else None
        except ValueError:
            born = None
            problem = "the birth date must be a date (YYYY-MM-DD)"
        if problem is None:
            try:
                result = gate_of(request, actor).search_patients(
                    identifier=identifier or None,
                    family=family or None,
                    given=given or None,
                    birth_date=born,
                    page=page,
                    count=SEARCH_MAX_COUNT,
                )
            except InvalidInput as exc:
                problem = str(exc)
    context = {
        "actor": actor,
        "q": {"identifier": identifier, "family": family, "given": given, "birth_date": birth_date},
        "result": result,
        "problem": problem,
        "page": page,
        "asked": asked,
        "moved": request.method == "GET" and request.query_params.get("moved") == "1",
    }
    template = (
        "clinician/search_results.html" if request.headers.get("hx-request") else "clinician/search.html"
    )
    return render(request, template, context, status_code=400 if problem else 200)


# Sections asked of the gate whoever asks: a role that does not see them is refused by the
# policy, and the refusal is audited (results are what a scrape of charts would be after).
GATE_DECIDES = frozenset({"results"})

# Rendered with the page: who the patient is and what they react to (safety first).
EAGER_SECTIONS = frozenset({"allergies"})


def _section_context(request: Request, actor: Actor, patient_id: str, names: Iterable[str]) -> dict[str, Any]:
    """What the section templates need: each section's data (one gate read each) and the forms'."""
    gate = gate_of(request, actor)
    context: dict[str, Any] = {}
    for name in names:
        if name == "results":
            # Two audited reads (observations, lab reports) read together as tables and trends.
            context[name] = results.results(
                gate.list_observations(patient_id=patient_id),
                gate.list_diagnostic_reports(patient_id=patient_id),
            )
            continue
        if name == "stays":
            context[name] = gate.list_encounters(patient_id=patient_id)
            continue
        context[name] = getattr(gate, f"list_{name}")(patient_id=patient_id)
    # Stays: admitted, moved and discharged by a physician; the wards named, not their codes.
    context["may_admit"] = Role.PHYSICIAN in actor.roles
    context["ward_choices"] = choices.wards(request, actor) if "stays" in names else []
    context["ward_names"] = {w.id: w.name for w in context["ward_choices"]}
    stays_shown = context.get("stays") or []
    if "stays" in names:
        # The beds of the stays listed, named; the free beds a physician admits or transfers to.
        held = [s.bed_id for s in stays_shown if s.bed_id] + [
            b.bed_id for s in stays_shown for b in s.beds or []
        ]
        context["bed_names"] = choices.place_labels(request, actor, held) if held else {}
        context["bed_choices"] = choices.free_beds(request, actor) if context["may_admit"] else []
    else:
        context["bed_names"], context["bed_choices"] = {}, []
    # Allergies: coded from the ATC catalogue (a class or a substance), recorded by clinicians.
    context["may_record_allergy"] = bool(actor.roles & CLINICAL_ROLES)
    context["allergy_choices"] = (
        choices.allergy_choices(language_of(request))
        if "allergies" in names and context["may_record_allergy"]
        else []
    )
    context["note_kinds"] = NOTE_KINDS
    context["may_write"] = bool(actor.roles & CLINICAL_ROLES)
    context["may_prescribe"] = Role.PHYSICIAN in actor.roles
    context["now"] = clock.now()  # an expired prescription is renewed, not printed
    context["may_schedule"] = bool(actor.roles & {Role.FRONT_DESK, Role.PHYSICIAN})
    context["practitioners"] = (
        directory.list_practitioners(runtime_of(request), actor=actor)
        if (context["may_schedule"] and "appointments" in names) or "care_team" in names
        else []
    )
    # Referring a patient or adding a colleague opens the chart to them: physicians only (the
    # gate decides; the form is not offered to whom it would refuse).
    context["may_refer"] = Role.PHYSICIAN in actor.roles
    context["care_problem"] = None
    context["care_draft"] = {}
    context["care_until_max"] = (clock.now() + CARE_TEAM_MAX_DURATION - dt.timedelta(days=1)).date()
    context["may_read_cards"] = bool(actor.roles & {Role.FRONT_DESK, Role.BILLING})
    context["may_take_payments"] = Role.BILLING in actor.roles
    context["warning"] = None
    context["findings"] = []
    context["rx_problem"] = None
    context["rx_problem_id"] = None
    context["draft"] = {}
    # The drug catalogue, offered as the medication field's suggestions (a datalist: no script).
    context["drug_choices"] = (
        [d.label(language_of(request)) for d in catalogue.drugs()] if "prescriptions" in names else []
    )
    # The nurse's administration record: each prescription's last doses, given or not (one
    # audited read of the patient's MedicationAdministrations).
    context["may_administer"] = bool(actor.roles & CLINICAL_ROLES)
    context["not_given_reasons"] = NOT_GIVEN_REASONS
    context["administrations"] = (
        doses_by_prescription(gate.list_medication_administrations(patient_id=patient_id))
        if "prescriptions" in names and context["may_administer"]
        else {}
    )
    context["card_problem"] = None
    context["pay_problem"] = None
    context["invoice_problem"] = None
    context["invoice_lines"] = []
    # Problems and diagnoses are a physician's (nurses read the list).
    context["may_diagnose"] = Role.PHYSICIAN in actor.roles
    context["clinical_statuses"] = CONDITION_CLINICAL_STATUSES
    context["new_verification_statuses"] = NEW_VERIFICATION_STATUSES
    context["verification_statuses"] = (*NEW_VERIFICATION_STATUSES, "refuted")
    context["condition_problem"] = None
    context["condition_problem_id"] = None
    context["condition_draft"] = {}
    return context


LAST_DOSES = 5  # shown under each prescription, newest first


def doses_by_prescription(given: list[InterventionView]) -> dict[str, list[dict[str, Any]]]:
    """The administrations recorded against each prescription (their `request`), newest first:
    when, by whom, given or why not. One without a request (received from another system
    without one) is listed by FHIR, not here."""
    doses: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(
        given, key=lambda r: r.occurred_at or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True
    ):
        kept = row.received or {}
        reference = str((kept.get("request") or {}).get("reference") or "")
        kind, _, prescription_id = reference.partition("/")
        if kind != "MedicationRequest" or not prescription_id:
            continue
        performers = kept.get("performer") or [{}]
        reasons = kept.get("statusReason") or [{}]
        coding = (reasons[0].get("coding") or [{}])[0]
        doses.setdefault(prescription_id, [])
        if len(doses[prescription_id]) < LAST_DOSES:
            doses[prescription_id].append(
                {
                    "at": row.occurred_at,
                    "by": (performers[0].get("actor") or {}).get("display") or "",
                    "given": row.status == "completed",
                    "reason": coding.get("code") or reasons[0].get("text") or "",
                    "dose": (kept.get("dosage") or {}).get("text") or "",
                    "note": " ".join(n.get("text", "") for n in kept.get("note") or []),
                }
            )
    return doses


def chart_context(
    request: Request, actor: Actor, patient_id: str, *, eager: Iterable[str] = EAGER_SECTIONS
) -> dict[str, Any]:
    patient = gate_of(request, actor).read_patient(patient_id=patient_id)
    sections = sections_for(actor)
    loaded = [name for name in sections if name in set(eager)]
    context: dict[str, Any] = {"actor": actor, "patient": patient, "sections": sections, "loaded": loaded}
    context |= _section_context(request, actor, patient_id, loaded)
    context["break_glass_active"] = glass_until(request, patient_id)
    context["age"] = age_of(patient.birth_date, clock.now().date())
    context["stay"] = current_stay(request, actor, patient_id) if actor.roles & CLINICAL_ROLES else None
    context["apps"] = apps.launchable(actor, request) if actor.roles & CLINICAL_ROLES else []
    context["form_origins"] = [app.origin for app in context["apps"]]
    context["may_print_letter"] = Role.PHYSICIAN in actor.roles  # prints the stay's discharge letter
    return context


def current_stay(request: Request, actor: Actor, patient_id: str) -> dict[str, Any] | None:
    """The stay in progress and its ward or bed, for the banner (an audited gate read, then
    the directory's audited read of the location)."""
    stays = gate_of(request, actor).list_encounters(patient_id=patient_id)
    stay = next((e for e in stays if e.status == "in-progress"), None)
    if stay is None:
        return None
    where = ""
    wanted = [x for x in (stay.location_id, stay.bed_id) if x]
    if wanted:
        try:
            labels = choices.place_labels(request, actor, wanted)
        except NotFound:
            labels = {}
        # "Ward · Room · Bed": where to find the patient, at a glance.
        where = " · ".join(labels[x] for x in wanted if x in labels)
    return {"kind": stay.kind or "", "since": stay.start_at, "where": where, "id": stay.id}


def age_of(birth_date: str | None, today: dt.date) -> int | None:
    """Full years on `today` (the banner's age); None when the birth date is not shown."""
    if not birth_date:
        return None
    try:
        born = dt.date.fromisoformat(birth_date[:10])
    except ValueError:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def chart_again(
    request: Request, actor: Actor, patient_id: str, section: str, *, status: int, **shown: Any
) -> Response:
    """The chart again after a form changed nothing: `section` open, with what to show in it
    (why nothing changed, what was typed)."""
    context = chart_context(request, actor, patient_id, eager=EAGER_SECTIONS | {section})
    context |= shown
    return render(request, "clinician/chart.html", context, status_code=status)


def _chart_or_glass(request: Request, actor: Actor, patient_id: str) -> dict[str, Any] | Response:
    try:
        return chart_context(request, actor, patient_id)
    except NotFound as exc:
        if not actor.roles & CLINICAL_ROLES:
            return error_page(request, exc)
        # Out of care looks like missing; a clinician may still break the glass.
        return render(
            request,
            "errors/not_found.html",
            {"actor": actor, "message": str(exc), "glass_patient": patient_id},
            status_code=404,
        )


@router.get("/patients/{patient_id}")
def chart(request: Request, actor: WebActor, patient_id: str) -> Response:
    context = _chart_or_glass(request, actor, patient_id)
    if isinstance(context, Response):
        return context
    return render(request, "clinician/chart.html", context)


@router.get("/patients/{patient_id}/sections/{name}")
def chart_section(request: Request, actor: WebActor, patient_id: str, name: str) -> Response:
    """One chart section: an htmx fragment, or a page of its own without scripts."""
    if name not in sections_for(actor) and name not in GATE_DECIDES:
        raise NotFound("no such section")
    fragment = bool(request.headers.get("hx-request"))
    if fragment:
        context: dict[str, Any] = {"actor": actor, "patient": {"id": patient_id}, "name": name}
        context |= _section_context(request, actor, patient_id, [name])
        context["break_glass_active"] = glass_until(request, patient_id)
        return render(request, f"clinician/sections/{name}.html", context)
    # A page of its own carries the patient's banner (who, age, stay, allergies) like the chart.
    context = chart_context(request, actor, patient_id, eager=EAGER_SECTIONS | {name})
    context["name"] = name
    if name not in context["loaded"]:  # asked of the gate all the same (GATE_DECIDES)
        context[name] = _section_context(request, actor, patient_id, [name])[name]
    return render(request, "clinician/section_page.html", context)


@router.post("/patients/{patient_id}/notes")
def write_note(
    request: Request,
    actor: WebActor,
    patient_id: str,
    kind: Annotated[str, Form(max_length=40)],
    title: Annotated[str, Form(max_length=200)],
    text: Annotated[str, Form(max_length=20000)],
) -> Response:
    gate_of(request, actor).write_note(patient_id=patient_id, kind=kind, title=title, text=text)
    return redirect(f"/patients/{patient_id}#notes")


@router.post("/patients/{patient_id}/notes/{note_id}/amend")
def amend_note(
    request: Request,
    actor: WebActor,
    patient_id: str,
    note_id: str,
    expected_version: Annotated[int, Form()],
    text: Annotated[str, Form(max_length=20000)],
    reason: Annotated[str, Form(max_length=500)],
) -> Response:
    gate_of(request, actor).amend_note(
        note_id=note_id, expected_version=expected_version, text=text, reason=reason
    )
    return redirect(f"/patients/{patient_id}#notes")


@router.post("/patients/{patient_id}/prescriptions")
def prescribe(
    request: Request,
    actor: WebActor,
    patient_id: str,
    medication: Annotated[str, Form(max_length=200)],
    dosage_text: Annotated[str, Form(max_length=500)],
    allergy_override_reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """A drug of the catalogue (its ATC code is what the safety checks read) and its dosage."""
    draft = {"medication": medication, "dosage_text": dosage_text}
    drug = catalogue.resolve(medication)
    if drug is None or not dosage_text.strip():
        problem = "unknown-drug" if drug is None else "no-dosage"  # worded in the template
        return chart_again(
            request, actor, patient_id, "prescriptions", status=400, rx_problem=problem, draft=draft
        )
    data = PrescriptionInput(
        patient_id=patient_id,
        medication_code=drug.atc,
        medication_display=drug.name.in_(language_of(request)).capitalize(),
        substance_code=drug.atc,
        dosage_text=dosage_text.strip(),
        allergy_override_reason=allergy_override_reason.strip() or None,
    )
    try:
        gate_of(request, actor).prescribe(data=data)
    except AllergyWarning as exc:
        # Nothing was prescribed: the chart again, each warning named, and the override field.
        return chart_again(
            request,
            actor,
            patient_id,
            "prescriptions",
            status=409,
            warning=str(exc),
            findings=getattr(exc, "findings", []),
            draft=draft,
        )
    return redirect(f"/patients/{patient_id}#prescriptions")


# Declared before the stop/hold/renew route, whose path would otherwise take this one.
@router.post("/patients/{patient_id}/prescriptions/{prescription_id}/administrations")
def administer(
    request: Request,
    actor: WebActor,
    patient_id: str,
    prescription_id: str,
    outcome: Annotated[str, Form(max_length=20)],
    reason: Annotated[str, Form(max_length=40)] = "",
    dose: Annotated[str, Form(max_length=100)] = "",
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """A dose given, or not given and why, from the chart (the nurse's administration record)."""
    try:
        gate_of(request, actor).administer_prescription(
            prescription_id=prescription_id,
            given=outcome == "given",
            reason=reason,  # a reason chosen with "Given" is refused, not dropped
            dose=dose,
            note=note,
        )
    except InvalidInput as exc:
        return chart_again(
            request,
            actor,
            patient_id,
            "prescriptions",
            status=400,
            rx_problem=str(exc),
            rx_problem_id=prescription_id,
        )
    return redirect(f"/patients/{patient_id}#prescriptions")


@router.post("/patients/{patient_id}/prescriptions/{prescription_id}/{action}")
def change_prescription(
    request: Request,
    actor: WebActor,
    patient_id: str,
    prescription_id: str,
    action: str,
    expected_version: Annotated[int, Form()],
    reason: Annotated[str, Form(max_length=500)] = "",
    allergy_override_reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Stop, hold, resume or renew from the chart, at the version shown (a stale one is 409)."""
    gate = gate_of(request, actor)
    try:
        if action == "stop":
            gate.stop_prescription(
                prescription_id=prescription_id, expected_version=expected_version, reason=reason
            )
        elif action == "hold":
            gate.hold_prescription(
                prescription_id=prescription_id, expected_version=expected_version, reason=reason
            )
        elif action == "resume":
            gate.resume_prescription(prescription_id=prescription_id, expected_version=expected_version)
        elif action == "renew":
            gate.renew_prescription(
                prescription_id=prescription_id,
                expected_version=expected_version,
                override_reason=allergy_override_reason.strip() or None,
            )
        else:
            raise NotFound("no such action")
    except AllergyWarning as exc:
        return chart_again(
            request,
            actor,
            patient_id,
            "prescriptions",
            status=409,
            warning=str(exc),
            findings=getattr(exc, "findings", []),
            rx_problem_id=prescription_id,
        )
    except InvalidInput as exc:
        return chart_again(
            request,
            actor,
            patient_id,
            "prescriptions",
            status=400,
            rx_problem=str(exc),
            rx_problem_id=prescription_id,
        )
    return redirect(f"/patients/{patient_id}#prescriptions")


@router.post("/patients/{patient_id}/care-team")
def refer(
    request: Request,
    actor: WebActor,
    patient_id: str,
    practitioner_id: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=500)],
    until: Annotated[str, Form(max_length=10)],
    kind: Annotated[str, Form(max_length=20)] = "referral",
) -> Response:
    """Refer the patient to a colleague (or add one to the care team) until a date: the end of
    that day on the hospital's clock (Paris). A refusal of the input is shown in the form, which
    keeps what was typed."""
    draft = {"practitioner_id": practitioner_id, "reason": reason, "until": until, "kind": kind}
    gate = gate_of(request, actor)
    try:
        if kind not in ("referral", "care_team"):
            raise InvalidInput("choose a referral or a care-team membership")
        try:
            day = dt.date.fromisoformat(until)
        except ValueError:
            raise InvalidInput("the end date must be a date") from None
        end = localtime.at(day, dt.time(23, 59))
        data = CareRelationshipInput(
            patient_id=patient_id, practitioner_id=practitioner_id, reason=reason, end_at=end
        )
        if kind == "referral":
            gate.refer_patient(data=data)
        else:
            gate.add_care_team_member(data=data)
    except (InvalidInput, Conflict) as exc:
        return chart_again(
            request, actor, patient_id, "care_team", status=400, care_problem=str(exc), care_draft=draft
        )
    return redirect(f"/patients/{patient_id}#care_team")


@router.post("/patients/{patient_id}/care-team/{care_team_id}/end")
def end_care(
    request: Request,
    actor: WebActor,
    patient_id: str,
    care_team_id: str,
    expected_version: Annotated[int, Form()],
) -> Response:
    """End a referral or a care-team membership now (kept in the list, as ended)."""
    gate_of(request, actor).end_care_relationship(
        care_team_id=care_team_id, expected_version=expected_version
    )
    return redirect(f"/patients/{patient_id}#care_team")


def _condition_input(patient_id: str, draft: dict[str, str]) -> ConditionInput:
    """The record form's input, or the first thing wrong with it, said plainly."""
    code = draft["code"].strip().upper()
    if not code:
        raise InvalidInput("the ICD-10 code is required")
    if re.fullmatch(ICD10_CODE, code) is None:
        raise InvalidInput("the code must be an ICD-10 code, e.g. I10 or E11.9")
    if not draft["display"].strip():
        raise InvalidInput("describe the problem (the text shown in the problem list)")
    if draft["clinical_status"] not in CONDITION_CLINICAL_STATUSES:
        raise InvalidInput("choose a clinical status from the list")
    if draft["verification_status"] not in NEW_VERIFICATION_STATUSES:
        raise InvalidInput("choose a verification status from the list")
    onset: dt.datetime | None = None
    if draft["onset"].strip():
        try:
            day = dt.date.fromisoformat(draft["onset"].strip())
        except ValueError:
            raise InvalidInput("the onset must be a date") from None
        onset = dt.datetime.combine(day, dt.time(0, 0), tzinfo=dt.UTC)
    return ConditionInput(
        patient_id=patient_id,
        code=code,
        display=draft["display"],
        clinical_status=draft["clinical_status"],
        verification_status=draft["verification_status"],
        onset_at=onset,
    )


def _conditions_again(
    request: Request,
    actor: Actor,
    patient_id: str,
    exc: InvalidInput | Conflict,
    *,
    draft: dict[str, str] | None = None,
    condition_id: str | None = None,
) -> Response:
    """The chart again, the problem list open with what went wrong (nothing was written)."""
    return chart_again(
        request,
        actor,
        patient_id,
        "conditions",
        status=409 if isinstance(exc, Conflict) else 400,
        condition_problem=str(exc),
        condition_problem_id=condition_id,
        condition_draft=draft or {},
    )


@router.post("/patients/{patient_id}/conditions")
def record_condition(
    request: Request,
    actor: WebActor,
    patient_id: str,
    code: Annotated[str, Form(max_length=20)] = "",
    display: Annotated[str, Form(max_length=200)] = "",
    clinical_status: Annotated[str, Form(max_length=20)] = "active",
    verification_status: Annotated[str, Form(max_length=20)] = "confirmed",
    onset: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Record a problem or diagnosis (ICD-10). A refusal of the input is shown in the form,
    which keeps what was typed; nothing is written."""
    draft = {
        "code": code,
        "display": display,
        "clinical_status": clinical_status,
        "verification_status": verification_status,
        "onset": onset,
    }
    try:
        gate_of(request, actor).record_condition(data=_condition_input(patient_id, draft))
    except (InvalidInput, Conflict) as exc:
        return _conditions_again(request, actor, patient_id, exc, draft=draft)
    return redirect(f"/patients/{patient_id}#conditions")


@router.post("/patients/{patient_id}/conditions/{condition_id}/update")
def update_condition(
    request: Request,
    actor: WebActor,
    patient_id: str,
    condition_id: str,
    expected_version: Annotated[int, Form()],
    clinical_status: Annotated[str, Form(max_length=20)] = "",
    verification_status: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Change a problem's clinical status (e.g. resolved) or verification (e.g. refuted), at the
    version shown: if someone changed it since, 409 and nothing written."""
    try:
        if verification_status == "entered-in-error":
            raise InvalidInput('use "Entered in error" to mark a problem recorded by mistake')
        gate_of(request, actor).amend_condition(
            condition_id=condition_id,
            expected_version=expected_version,
            clinical_status=clinical_status or None,
            verification_status=verification_status or None,
        )
    except (InvalidInput, Conflict) as exc:
        return _conditions_again(request, actor, patient_id, exc, condition_id=condition_id)
    return redirect(f"/patients/{patient_id}#conditions")


@router.post("/patients/{patient_id}/conditions/{condition_id}/entered-in-error")
def condition_entered_in_error(
    request: Request,
    actor: WebActor,
    patient_id: str,
    condition_id: str,
    expected_version: Annotated[int, Form()],
) -> Response:
    """Mark a problem recorded by mistake: kept in the list, struck and labelled, every version
    kept; the right one is recorded anew."""
    try:
        gate_of(request, actor).amend_condition(
            condition_id=condition_id,
            expected_version=expected_version,
            verification_status="entered-in-error",
        )
    except (InvalidInput, Conflict) as exc:
        return _conditions_again(request, actor, patient_id, exc, condition_id=condition_id)
    return redirect(f"/patients/{patient_id}#conditions")


@router.get("/patients/{patient_id}/break-glass")
def break_glass_form(request: Request, actor: WebActor, patient_id: str) -> Response:
    if not actor.roles & CLINICAL_ROLES:
        raise refuse(
            request,
            actor,
            kind=AuditKind.BREAK_GLASS_START,
            resource_type="Patient",
            reason="only clinicians may break the glass",
        )
    return render(
        request,
        "clinician/break_glass.html",
        {
            "actor": actor,
            "patient_id": patient_id,
            "reasons": list(BreakGlassReason),
            "problem": None,
            "draft": {},
        },
    )


@router.post("/patients/{patient_id}/break-glass")
def break_glass(
    request: Request,
    actor: WebActor,
    patient_id: str,
    reason: Annotated[str, Form(max_length=40)],
    justification: Annotated[str, Form(max_length=1000)],
    otp: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    runtime = runtime_of(request)
    try:
        if otp.strip():
            # The step-up and the emergency access come from the same dialog.
            at = Authenticator.of(runtime).step_up(
                actor=actor, otp=otp.strip(), webauthn=None, challenge_id=None
            )
            actor = dataclasses.replace(actor, second_factor_at=at)
        grant = Gate(runtime, actor).break_glass(
            patient_id=patient_id, reason=reason, justification=justification
        )
    except (InvalidInput, StepUpRequired) as exc:
        # Shown in the dialog itself, which keeps what was typed.
        return render(
            request,
            "clinician/break_glass.html",
            {
                "actor": actor,
                "patient_id": patient_id,
                "reasons": list(BreakGlassReason),
                "problem": str(exc),
                "draft": {"reason": reason, "justification": justification},
            },
            status_code=400 if isinstance(exc, InvalidInput) else 403,
        )
    response = redirect(f"/patients/{grant.patient_id}")
    response.set_cookie(
        GLASS_COOKIE,
        f"{grant.patient_id}|{grant.expires_at.isoformat()}",
        max_age=3600,
        path="/",
        httponly=True,
        samesite="strict",
    )
    return response
