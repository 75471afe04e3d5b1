"""Dates, days and amounts through Babel: fr-FR and en-GB by default, en-US only when asked."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.requests import Request

from carnet.web.labels import label, timeline_sentence
from carnet.web.rendering import _formatters, locale_of, translations

MOMENT = dt.datetime(2026, 11, 29, 0, 58, tzinfo=dt.UTC)


def _request(accept: str) -> Request:
    return Request({"type": "http", "headers": [(b"accept-language", accept.encode())]})


@pytest.mark.parametrize(
    ("language", "accept", "locale"),
    [
        ("fr", "fr-FR,fr;q=0.9", "fr_FR"),
        ("fr", "en-US", "fr_FR"),  # the switch chose French
        ("en", "en", "en_GB"),
        ("en", "en-GB,en;q=0.9", "en_GB"),
        ("en", "de-DE,en;q=0.5", "en_GB"),
        ("en", "", "en_GB"),
        ("en", "en-US,en;q=0.9", "en_US"),  # only when asked
        ("en", "fr-FR,en-US;q=0.8", "en_US"),
    ],
)
def test_locale_of(language: str, accept: str, locale: str) -> None:
    assert locale_of(_request(accept), language) == locale


@pytest.mark.parametrize(
    ("locale", "when", "day", "weekday", "money", "number"),
    [
        ("fr_FR", "29/11/2026 01:58", "29 nov. 2026", "dimanche", "1\u202f234,50\xa0€", "37,5"),
        ("en_GB", "29/11/2026, 01:58", "29 Nov 2026", "Sunday", "€1,234.50", "37.5"),
        ("en_US", "11/29/26, 1:58\u202fAM", "Nov 29, 2026", "Sunday", "€1,234.50", "37.5"),
    ],
)
def test_formats(locale: str, when: str, day: str, weekday: str, money: str, number: str) -> None:
    f = _formatters(locale, translations("fr" if locale == "fr_FR" else "en").gettext)
    assert f["when"](MOMENT) == when
    assert f["day"](MOMENT.date()) == day
    assert f["weekday"](MOMENT.date()) == weekday
    assert f["money"](123450, "EUR") == money
    assert f["number"](37.5, 1) == number
    assert f["hour"](MOMENT) == "01:58"  # 00:58 UTC is 01:58 in Paris (winter time)


def test_codes_as_words_in_french() -> None:
    fr = translations("fr").gettext
    assert label(fr, "role", "front_desk") == "Accueil"
    assert label(fr, "gender", "male") == "homme"
    assert label(fr, "prescription", "stopped") == "arrêtée"
    assert label(fr, "appointment", "booked") == "réservé"
    assert label(fr, "prescription", "unheard-of") == "unheard-of"  # visible, never hidden
    assert label(fr, "role", None) == ""
    assert (
        timeline_sentence(fr, "audit", "phi:resource:list (error) from 10.0.0.7")
        == "a listé des dossiers patients — échec depuis 10.0.0.7"
    )
    assert timeline_sentence(fr, "exposure", "shown through chart") == "patients affichés dans un dossier"
    assert timeline_sentence(fr, "detection", "deep-page") == "a parcouru les résultats très loin"
    assert timeline_sentence(fr, "audit", "something else") == "something else"


@pytest.mark.parametrize(
    ("stored", "written"),
    [
        # the seeded demo's address, its keys in the order they come back from storage
        (
            {
                "city": "Lemaire",
                "country": "FR",
                "line": "138 avenue Henriette Gérard",
                "postalCode": "93315",
            },
            "138 avenue Henriette Gérard, 93315 Lemaire",
        ),
        ({"line": "1 rue de Test", "city": "Paris"}, "1 rue de Test, Paris"),  # the desk's form
        ({"city": "Genève", "postalCode": "1201", "country": "CH"}, "1201 Genève, CH"),
        ({"line": "2 Main St", "district": "Kent", "city": "Ashford"}, "2 Main St, Ashford, Kent"),
        (None, ""),
    ],
)
def test_an_address_is_written_as_on_an_envelope(stored: dict[str, str] | None, written: str) -> None:
    assert _formatters("fr_FR", translations("fr").gettext)["postal_address"](stored) == written
