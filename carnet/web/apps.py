"""SMART apps in the web UI: the "launch app" action of a chart (EHR launch), and the page on
which a person signs in, picks a patient (standalone launch) and lets an app act for them.

The rules are in carnet.identity.oauth (codes, launches, scopes) and the gate (who may see
which patient): every patient named on these pages is read through the gate, audited.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from carnet.access import scopes as smart
from carnet.access.actor import Actor, ActorKind
from carnet.identity import oauth
from carnet.identity.dependencies import runtime_of
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.kernel.ids import parse_id
from carnet.phi.gate import Gate
from carnet.phi.schemas import PatientView
from carnet.web.rendering import language_of, render, translations
from carnet.web.routing import WebActor, WebRoute

router = APIRouter(route_class=WebRoute, include_in_schema=False)

AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "aud",
    "launch",
    "nonce",
)
# The consent page must not be framed (clickjacking an "Allow") nor leak its URL.
_HEADERS = {"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _to_app(uri: str, params: dict[str, str]) -> RedirectResponse:
    separator = "&" if "?" in uri else "?"
    return RedirectResponse(uri + separator + urlencode(params), status_code=303)


def _refused(params: dict[str, str], exc: oauth.AuthorizationRefused) -> RedirectResponse:
    # Only after check_authorization_request accepted the client and this redirect URI.
    return _to_app(
        params["redirect_uri"], {"error": exc.error, "error_description": str(exc), "state": params["state"]}
    )


def _describe(scope: str, _: Any) -> str:
    """A scope in plain words, in the person's language."""
    words = {
        smart.OPENID: _("know who you are"),
        smart.FHIR_USER: _("know your professional record (fhirUser)"),
        "profile": _("know your name"),
        smart.LAUNCH: _("open the patient whose chart you launched it from"),
        smart.LAUNCH_PATIENT: _("open the patient you choose below"),
        smart.OFFLINE: _("keep its access for up to 24 hours, even after you close it"),
        smart.ONLINE: _("keep its access for up to 1 hour"),
    }
    if scope in words:
        return str(words[scope])
    parsed = smart.parse(scope)
    if parsed is None:
        return scope
    writes = parsed.permission in ("write", "*") or bool(set(parsed.permission) & {"c", "u", "d"})
    reads = parsed.permission in ("read", "*") or bool(set(parsed.permission) & {"r", "s"})
    what = _("all record types") if parsed.resource == "*" else parsed.resource
    action = (
        _("read and change %(what)s")
        if reads and writes
        else _("change %(what)s")
        if writes
        else _("read %(what)s")
    ) % {"what": what}
    if parsed.categories:
        action += " (" + ", ".join(sorted(parsed.categories)) + ")"
    whose = _("of this patient only") if parsed.context == "patient" else _("of the patients you may see")
    return f"{action}, {whose}"


def _patient(request: Request, actor: Actor, patient_id: uuid.UUID | str) -> PatientView:
    """The patient through the gate: NotFound unless this person may see them (audited)."""
    return Gate(runtime_of(request), actor).read_patient(patient_id=str(patient_id))


def _page(
    request: Request,
    checked: oauth.AuthorizationRequest,
    params: dict[str, str],
    *,
    patient: PatientView | None,
    found: list[PatientView] | None = None,
    search: dict[str, str] | None = None,
) -> Response:
    gettext = translations(language_of(request)).gettext
    context = {
        "app": checked,
        "params": {k: v for k, v in params.items() if v},
        "scopes": [(s, _describe(s, gettext)) for s in checked.scopes],
        "patient": patient,
        "picking": checked.wants_patient and patient is None,
        "found": found,
        "search": search or {},
        # The answer redirects to the app: CSP's form-action must name its origin.
        "form_origins": [oauth.origin_of(checked.redirect_uri)],
    }
    return render(request, "apps/authorize.html", context, headers=_HEADERS)


@router.get("/oauth/authorize")
def authorize_page(request: Request, actor: WebActor) -> Response:
    """What the app asks for, for which patient; a patient picker for a standalone launch."""
    runtime = runtime_of(request)
    params = {k: request.query_params.get(k, "") for k in AUTHORIZE_PARAMS}
    try:
        checked = oauth.check_request(runtime, params)
        patient: PatientView | None = None
        if checked.launch:
            patient = _patient(
                request, actor, oauth.pending_launch_patient(runtime, request=checked, actor=actor)
            )
        elif actor.kind == ActorKind.PATIENT and actor.patient_id is not None:
            patient = _patient(request, actor, actor.patient_id)
    except oauth.AuthorizationRefused as exc:
        return _refused(params, exc)
    found: list[PatientView] | None = None
    search = {k: request.query_params.get(k, "").strip() for k in ("family", "given")}
    if checked.wants_patient and patient is None and any(search.values()):
        # The picker: only patients this person may see through the gate's rules (a name
        # among their own patients), counted and audited like any search.
        try:
            page = Gate(runtime, actor).search_patients(
                family=search["family"] or None, given=search["given"] or None, count=20
            )
            found = page.items
        except InvalidInput:
            found = []
    return _page(request, checked, params, patient=patient, found=found, search=search)


@router.post("/oauth/authorize")
async def authorize_decision(request: Request, actor: WebActor) -> Response:
    """The person's answer: a one-time code for the app, or access_denied."""
    runtime = runtime_of(request)
    form = await request.form()
    params = {k: str(form.get(k) or "") for k in AUTHORIZE_PARAMS}
    try:
        checked = oauth.check_request(runtime, params)
        if form.get("decision") != "approve":
            raise oauth.AuthorizationRefused("access_denied", "the person declined")
        patient_id: uuid.UUID | None = None
        if checked.launch:
            patient_id = oauth.pending_launch_patient(runtime, request=checked, actor=actor)
        elif checked.wants_patient and actor.kind != ActorKind.PATIENT:
            patient_id = parse_id(str(form.get("patient") or ""))
            if patient_id is None:
                raise InvalidInput("choose a patient for the app")
        if patient_id is not None:
            _patient(request, actor, patient_id)  # the gate says this person may see them
        checked, code = oauth.approve(runtime, params=params, actor=actor, patient_id=patient_id)
    except oauth.AuthorizationRefused as exc:
        return _refused(params, exc)
    return _to_app(checked.redirect_uri, {"code": code, "state": checked.state})


@router.post("/patients/{patient_id}/apps/{client_id}/launch")
def launch_app(request: Request, actor: WebActor, patient_id: str, client_id: str) -> Response:
    """EHR launch: a single-use, 5-minute launch context for this person, patient and app."""
    pid = parse_id(patient_id)
    if pid is None:
        raise NotFound("no such patient")
    _patient(request, actor, pid)  # only a chart this person may open
    url = oauth.start_launch(runtime_of(request), client_id=client_id, actor=actor, patient_id=pid)
    return RedirectResponse(url, status_code=303)


def launchable(actor: Actor, request: Request) -> list[oauth.LaunchableApp]:
    """The apps a chart offers to launch (none for a privileged account)."""
    if actor.is_privileged or actor.kind != ActorKind.STAFF:
        return []
    return oauth.apps_to_launch(runtime_of(request))
