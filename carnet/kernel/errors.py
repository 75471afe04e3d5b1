"""Errors shared by every layer. Presentation layers map them to HTTP / FHIR / CLI answers."""


class CarnetError(Exception):
    """Base of carnet's own errors. The message is safe to show: it never holds patient data."""


class NotFound(CarnetError):
    """The resource does not exist, or the actor may not know it exists (same answer)."""


class Forbidden(CarnetError):
    """The actor may not do this. Used only where revealing the refusal leaks nothing."""


class InvalidInput(CarnetError):
    """Input failed validation; nothing was changed."""


class Conflict(CarnetError):
    """A precondition failed: stale version (If-Match), double booking, duplicate."""


class AuthenticationRequired(CarnetError):
    """No usable session or token."""


class StepUpRequired(CarnetError):
    """A fresh second factor is needed before this action."""


class AccountContained(CarnetError):
    """The account is suspended by detection; the message says whom to call."""


class ConfigurationError(CarnetError):
    """Settings or keys are missing or wrong; carnet refuses to start."""


class Throttled(CarnetError):
    """Detection slowed this actor down; retry later (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
