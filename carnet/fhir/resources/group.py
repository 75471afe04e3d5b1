"""FHIR Group, read-only: carnet's one kind of group is a practitioner's own patient list (their
care population: care team, referrals, appointments, stays), named by the practitioner's id.

A Group is what a Bulk Data `Group/[id]/$export` names (carnet.fhir.operations.export): only
its practitioner may read it or export it, and it lists no members (they leave only through an
export approved by a second person). Reading one is audited like a directory read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.group import Group

from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.fhir.core.api import checked, gate_for, resource_response
from carnet.fhir.core.mapping import ref
from carnet.fhir.core.registry import FhirModule, ResourceType
from carnet.identity.dependencies import runtime_of
from carnet.kernel.errors import NotFound

router = APIRouter(prefix="/fhir/Group", tags=["fhir"])
GROUP = "Group"
KIND = "https://carnet.example.org/fhir/CodeSystem/group-kind"


def group_to_fhir(practitioner_id: str) -> dict[str, Any]:
    resource = {
        "resourceType": GROUP,
        "id": practitioner_id,
        "meta": {"versionId": "1"},
        "type": "person",
        "actual": True,
        "code": {"coding": [{"system": KIND, "code": "care-population", "display": "patients in my care"}]},
        "name": "Patients in the care of this practitioner",
        "managingEntity": ref("Practitioner", practitioner_id),
    }
    return checked(Group, resource)


@router.get("/{group_id}")
def read_group(request: Request, group_id: str) -> Response:
    gate = gate_for(request, GROUP, "read")
    actor = gate.actor

    def action(session: Any, ctx: AccessContext) -> tuple[str, AuditRecord]:
        # Someone else's list answers like a missing one (audited as a denial).
        if actor.practitioner_id is None or str(actor.practitioner_id) != group_id:
            raise NotFound("no such resource")
        record = AuditRecord(
            kind=AuditKind.DIRECTORY_READ,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type=GROUP,
            resource_ids=[group_id],
        )
        return group_id, record

    found = run_audited(runtime_of(request), actor, AuditKind.DIRECTORY_READ, action, resource_type=GROUP)
    return resource_response(request, group_to_fhir(found))


MODULE = FhirModule(router=router, types=(ResourceType(GROUP, ("read",)),))
