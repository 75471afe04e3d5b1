"""A Patient view's INS is compacted as `normalize_identifier` compacts it (the validator's
compiled pattern is the same rule)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carnet.crypto.blind import normalize_identifier
from carnet.phi.schemas import PatientView, _compact_ins

_ins = st.text(
    alphabet=st.sampled_from([*"0123456789abAB .-_\t\n\r\x0b\x0c\u00a0\u2003\u3000ßéı", "\u200b", "\x1c"]),
    max_size=20,
)


@settings(max_examples=2000, deadline=None)
@given(_ins)
def test_the_view_compacts_the_ins_as_normalize_identifier(value: str) -> None:
    assert PatientView(id="p", ins=value).ins == normalize_identifier(value) == _compact_ins(value)


def test_no_ins_stays_none() -> None:
    assert PatientView(id="p").ins is None
    assert PatientView(id="p", ins=None).ins is None
