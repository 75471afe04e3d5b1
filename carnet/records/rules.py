"""Who may amend a clinical note: its author, or a physician of the patient's care team.
Anyone else who may write to the chart adds an addendum (a note of their own) instead, so a
nurse cannot rewrite a physician's consultation note."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from carnet.access.policy import Relationship
from carnet.access.roles import Role

# The relationships that make a physician one of the patient's care team (break-the-glass, an
# appointment or a facility's scope do not).
CARE_TEAM_RELATIONSHIPS = frozenset(
    {Relationship.CARE_TEAM, Relationship.ATTENDING, Relationship.DESIGNATED, Relationship.REFERRAL}
)


def may_amend_note(
    *,
    author_id: uuid.UUID,
    practitioner_id: uuid.UUID | None,
    roles: Collection[Role],
    relationships: Collection[Relationship],
) -> bool:
    if practitioner_id is not None and practitioner_id == author_id:
        return True
    return Role.PHYSICIAN in roles and bool(CARE_TEAM_RELATIONSHIPS & set(relationships))
