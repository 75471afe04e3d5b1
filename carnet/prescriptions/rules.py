"""The medication checks: an active allergy to the prescribed substance stops a prescription."""

from __future__ import annotations

from carnet.kernel.errors import (
    Conflict,
)


class AllergyWarning(Conflict):
    """The patient has an active allergy to the prescribed substance; nothing was written."""
