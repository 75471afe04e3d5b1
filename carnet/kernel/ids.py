"""Identifiers. Rows get their id before insert so ciphertexts can bind to it."""

import uuid


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def parse_id(value: str) -> uuid.UUID | None:
    """Parse a public id; None when it is not one (callers answer 'not found')."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None
