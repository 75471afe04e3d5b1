"""The access policy as data: minimum necessary per role, deny by default, and the published
matrix (docs/ACCESS.md) equal to the policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from carnet.access import matrix, policy, scopes
from carnet.access.permissions import Permission, permissions_of
from carnet.access.policy import Relationship, ResourceType, decide
from carnet.access.roles import Role
from carnet.interventions.schemas import InterventionView
from carnet.phi import schemas

DOC = Path(__file__).resolve().parents[2] / "docs" / "ACCESS.md"
CLINICAL = {
    ResourceType.NOTE,
    ResourceType.PRESCRIPTION,
    ResourceType.ALLERGY,
    ResourceType.OBSERVATION,
    ResourceType.CONDITION,
    ResourceType.ENCOUNTER,
}
SCHEMAS = {
    ResourceType.PATIENT: schemas.PatientView,
    ResourceType.APPOINTMENT: schemas.AppointmentView,
    ResourceType.ENCOUNTER: schemas.EncounterView,
    ResourceType.ALLERGY: schemas.AllergyView,
    ResourceType.NOTE: schemas.NoteView,
    ResourceType.PRESCRIPTION: schemas.PrescriptionView,
    ResourceType.COVERAGE: schemas.CoverageView,
    ResourceType.CARD_READING: schemas.CardReadingView,
    ResourceType.INVOICE: schemas.InvoiceView,
    ResourceType.OBSERVATION: schemas.ObservationView,
    ResourceType.CONDITION: schemas.ConditionView,
    ResourceType.CARE_TEAM: schemas.CareTeamView,
    ResourceType.DIAGNOSTIC_REPORT: schemas.DiagnosticReportView,
    ResourceType.CONSENT: schemas.ConsentView,
    ResourceType.SERVICE_REQUEST: schemas.ServiceRequestView,
    ResourceType.IMMUNIZATION: InterventionView,
    ResourceType.PROCEDURE: InterventionView,
    ResourceType.MEDICATION_ADMINISTRATION: InterventionView,
    ResourceType.MEDICATION_STATEMENT: InterventionView,
    ResourceType.SPECIMEN: InterventionView,
}
EVERY = list(Relationship)


def test_published_matrix_is_the_policy() -> None:
    assert matrix.published_block(DOC.read_text(encoding="utf-8")) == matrix.render(), (
        "docs/ACCESS.md is stale: python -m carnet.access.matrix --write docs/ACCESS.md"
    )


def test_every_field_named_by_the_policy_exists_in_its_schema() -> None:
    for resource, fields in policy.ALL_FIELDS.items():
        assert fields <= set(SCHEMAS[resource].model_fields), resource
    assert set(SCHEMAS) == set(ResourceType)


def test_an_api_client_reads_its_facility_by_no_other_relationship_and_only_what_scopes_name() -> None:
    others = [r for r in Relationship if r is not Relationship.FACILITY]
    for resource in ResourceType:
        for write in (False, True):
            assert not decide(
                roles=[Role.API_CLIENT], resource=resource, relationships=others, write=write
            ).allowed
    assert decide(roles=[Role.API_CLIENT], resource=ResourceType.OBSERVATION, relationships=EVERY).allowed
    # Its permissions are those its token's scopes name, and none without scopes.
    assert scopes.permissions_for(()) == frozenset()
    assert scopes.permissions_for(["system/Observation.c"]) == {Permission.OBSERVATION_WRITE}
    assert scopes.permissions_for(["system/Patient.read"]) == {
        Permission.PATIENT_READ,
        Permission.PATIENT_SEARCH,
    }
    assert not scopes.reads(["system/Observation.c"], ResourceType.OBSERVATION)


@pytest.mark.parametrize("role", [Role.SYSTEM_ADMINISTRATOR, Role.SECURITY_OFFICER])
def test_roles_that_read_no_patient_data(role: Role) -> None:
    assert not any(p.value.startswith("phi:") for p in permissions_of([role]))
    for resource in ResourceType:
        for write in (False, True):
            assert not decide(roles=[role], resource=resource, relationships=EVERY, write=write).allowed


@pytest.mark.parametrize("role", [Role.FRONT_DESK, Role.BILLING])
def test_front_desk_and_billing_never_see_clinical_data(role: Role) -> None:
    for resource in CLINICAL:
        assert not decide(roles=[role], resource=resource, relationships=EVERY).allowed
    appointment = decide(roles=[role], resource=ResourceType.APPOINTMENT, relationships=EVERY)
    assert "reason" not in appointment.fields


def test_minimum_necessary_per_role() -> None:
    front = decide(
        roles=[Role.FRONT_DESK], resource=ResourceType.PATIENT, relationships=[Relationship.FACILITY]
    )
    assert {"phone", "address", "email"} <= front.fields
    billing = decide(
        roles=[Role.BILLING], resource=ResourceType.PATIENT, relationships=[Relationship.FACILITY]
    )
    assert billing.allowed and not billing.fields & policy.PATIENT_CONTACT
    assert decide(
        roles=[Role.BILLING], resource=ResourceType.INVOICE, relationships=[Relationship.FACILITY]
    ).allowed
    assert not decide(roles=[Role.FRONT_DESK], resource=ResourceType.INVOICE, relationships=EVERY).allowed
    nurse = decide(roles=[Role.NURSE], resource=ResourceType.NOTE, relationships=[Relationship.WARD])
    assert nurse.allowed
    assert not decide(
        roles=[Role.NURSE], resource=ResourceType.PATIENT, relationships=[Relationship.FACILITY]
    ).allowed
    assert not decide(
        roles=[Role.NURSE], resource=ResourceType.PRESCRIPTION, relationships=[Relationship.WARD], write=True
    ).allowed
    # A physician without a relationship sees nothing; a search result only locates.
    assert not decide(
        roles=[Role.PHYSICIAN], resource=ResourceType.PATIENT, relationships=[Relationship.FACILITY]
    ).allowed
    located = decide(
        roles=[Role.PHYSICIAN], resource=ResourceType.PATIENT, relationships=[Relationship.LOCATED]
    )
    assert located.fields == policy.PATIENT_LOCATE
    full = decide(roles=[Role.PHYSICIAN], resource=ResourceType.NOTE, relationships=[Relationship.CARE_TEAM])
    assert full.fields == policy.NOTE_ALL
    assert not decide(
        roles=[Role.PHYSICIAN],
        resource=ResourceType.PATIENT,
        relationships=[Relationship.FACILITY],
        write=True,
    ).allowed
    # A patient: their own record only.
    assert decide(roles=[Role.PATIENT], resource=ResourceType.NOTE, relationships=[Relationship.SELF]).allowed
    assert not decide(
        roles=[Role.PATIENT], resource=ResourceType.PATIENT, relationships=set(EVERY) - {Relationship.SELF}
    ).allowed


def test_deny_by_default() -> None:
    assert not decide(roles=[Role.PHYSICIAN], resource="Secret", relationships=EVERY).allowed
    assert not decide(roles=["root"], resource=ResourceType.PATIENT, relationships=EVERY).allowed
    assert not decide(roles=[], resource=ResourceType.PATIENT, relationships=EVERY).allowed
    assert not decide(roles=[Role.PHYSICIAN], resource=ResourceType.PATIENT, relationships=[]).allowed
    assert permissions_of(["root"]) == frozenset()
    assert Permission.PATIENT_READ in permissions_of(["physician", "root"])


def test_only_a_write_only_facility_feed_is_decided_without_care_relationships() -> None:
    # The gate skips the care-relationship lookup for such roles (carnet/phi/care.py): it must
    # be exactly the roles no care relationship can change a decision of.
    alone = {role for role in Role if policy.decided_by_facility_alone([role])}
    assert Role.INTERFACE in alone  # and the administrators, who are refused under any relationship
    assert not alone & {Role.PHYSICIAN, Role.NURSE, Role.FRONT_DESK, Role.API_CLIENT, Role.PATIENT}
    for role in alone:
        for resource in ResourceType:
            for write in (False, True):
                facility = decide(
                    roles=[role], resource=resource, relationships=[Relationship.FACILITY], write=write
                )
                every = decide(roles=[role], resource=resource, relationships=list(Relationship), write=write)
                assert (facility.allowed, facility.fields) == (every.allowed, every.fields)
    assert not policy.decided_by_facility_alone([Role.INTERFACE, Role.PHYSICIAN])
    assert not policy.decided_by_facility_alone([])


def test_a_remembered_decision_is_the_decision_computed() -> None:
    """`decide` remembers its answers: sound only while a decision depends on its arguments alone
    (the policy's tables never change after import) and not on the order of roles or
    relationships. Every role alone and with each other one, every resource, relationship set of
    one and of all, read and write, both orders: the remembered answer is the computed one."""
    roles = list(Role)
    pairs = [[r] for r in roles] + [[a, b] for a in roles for b in roles if a < b]
    for held in pairs:
        for resource in ResourceType:
            for rels in [[rel] for rel in Relationship] + [EVERY]:
                for write in (False, True):
                    computed = policy._decide(
                        roles=held, resource=resource, relationships=rels, write=write, permission=None
                    )
                    assert decide(roles=held, resource=resource, relationships=rels, write=write) == computed
                    again = decide(
                        roles=list(reversed(held)),
                        resource=resource.value,
                        relationships=list(reversed(rels)),
                        write=write,
                    )
                    assert again == computed


def test_remembered_permissions_are_the_permissions_computed() -> None:
    """`permissions_of` remembers its answer per set of roles (ROLE_PERMISSIONS never changes)."""
    from carnet.access import permissions

    roles = [*Role, "no-such-role"]
    for held in [[r] for r in roles] + [[a, b] for a in roles for b in roles if a != b]:
        computed = permissions._permissions_of(held)
        assert permissions_of(frozenset(held)) == computed == permissions_of(frozenset(held))
        assert permissions_of(held) == computed
