"""FHIR `$validate`: may this actor write this type at all? Checked and audited like a write,
while nothing is read or written; run only by the gate kernel."""

from __future__ import annotations

from carnet.access.permissions import Permission
from carnet.access.policy import WRITE_PERMISSION, ResourceType
from carnet.audit.interfaces import AuditKind
from carnet.identity.oauth import require_scope
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.phi.kernel import RT, GuardedTx, Refused, guarded


@guarded(AuditKind.PHI_VALIDATE, RT.PATIENT, targeted=False)
def check_write(tx: GuardedTx, /, *, resource_type: str, mode: str) -> None:
    """The permission a create, update or delete of `resource_type` needs, and a token's
    scope for it: a `$validate` tells the shape of a write only to whom may make it."""
    if mode not in ("create", "update", "delete"):
        raise InvalidInput("mode must be create, update or delete")
    try:
        kind = ResourceType(resource_type)
    except ValueError:
        raise Refused("no write of this resource type is known to the policy") from None
    tx.resource_type = kind.value
    permission = Permission.PATIENT_CREATE if (kind, mode) == (RT.PATIENT, "create") else None
    needed = permission or WRITE_PERMISSION.get(kind)
    if needed is None:
        raise Refused(f"{kind.value} is not written through the API")
    tx.require(needed)
    if tx.actor.scopes is not None:
        try:
            require_scope(tx.actor, resource_type=kind.value, action=mode)
        except Forbidden as exc:
            raise Refused(str(exc)) from None
    tx.reasons.append(f"$validate ({mode}) of a {kind.value}: nothing read, nothing written")
