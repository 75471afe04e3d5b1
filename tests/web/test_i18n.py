"""English and French: language from the switch or Accept-Language; every page string translated."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

import carnet.web

WEB = Path(carnet.web.__file__).parent


def test_french_from_accept_language_and_switch(client: TestClient) -> None:
    page = client.get("/login", headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    assert 'lang="fr"' in page.text and "Se connecter" in page.text
    switched = client.get("/lang/en?next=/login")
    assert switched.status_code == 303 and switched.headers["location"] == "/login"
    page = client.get("/login", headers={"Accept-Language": "fr-FR"})
    assert 'lang="en"' in page.text and "Sign in" in page.text
    assert client.get("/lang/xx").status_code == 404
    assert client.get("/lang/fr?next=https://evil.example/").headers["location"] == "/login"


def test_every_template_string_has_a_french_translation() -> None:
    with (WEB / "locale/fr/LC_MESSAGES/messages.po").open("rb") as handle:
        catalog = read_po(handle)
    method_map = [("templates/**.html", "jinja2"), ("labels.py", "python"), ("apps.py", "python")]
    keywords = {"_": None, "N_": None, "ngettext": (1, 2)}
    wanted = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract_from_dir(str(WEB), method_map, keywords=keywords)
    }
    untranslated = sorted(m for m in wanted if not getattr(catalog.get(m), "string", None))
    assert wanted and not untranslated, untranslated
    compiled = (WEB / "locale/fr/LC_MESSAGES/messages.mo").stat().st_mtime
    assert compiled >= (WEB / "locale/fr/LC_MESSAGES/messages.po").stat().st_mtime - 1
