"""Templates, languages and the security headers every page carries.

Autoescaping is on for every template (patient names are data, never markup). The policy
allows scripts from our own origin only: no inline script, no eval, no CDN.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from babel import Locale
from babel.core import UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, get_decimal_symbol
from babel.support import NullTranslations, Translations
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from carnet.kernel import localtime
from carnet.web.labels import label, timeline_sentence
from carnet.web.messages import say

HERE = Path(__file__).parent
LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "carnet_lang"
CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "carnet_csrf"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
# A decimal point between digits, not one of a dotted code ("1.2.250" stays as it is).
DECIMAL_POINT = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])")
# UCUM codes as results carry them -> as a clinician writes them (carnet.records.results).
UNIT_DISPLAY = {"Cel": "°C", "mm[Hg]": "mmHg", "10*9/L": "10⁹/L", "10*12/L": "10¹²/L"}
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Pages hold patient data: never kept by the browser or a shared proxy.
    "Cache-Control": "no-store",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


@functools.cache
def translations(language: str) -> NullTranslations:
    if language == DEFAULT_LANGUAGE:
        return NullTranslations()
    return Translations.load(str(HERE / "locale"), locales=[language], domain="messages")


def language_of(request: Request) -> str:
    """The switch (a cookie) first, then the browser's Accept-Language, then English."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    header = request.headers.get("accept-language", "")
    wanted = [part.split(";")[0].strip().replace("-", "_") for part in header.split(",") if part.strip()]
    try:
        found = Locale.negotiate(wanted, list(LANGUAGES)) if wanted else None
    except (UnknownLocaleError, ValueError):
        found = None
    return str(found.language) if found is not None else DEFAULT_LANGUAGE


def locale_of(request: Request, language: str) -> str:
    """The locale dates and numbers are written in: fr_FR for French; for English en_GB (day
    before month, 24-hour clock, as a European hospital reads them) unless the browser asks for
    en-US first among its English variants."""
    if language != "en":
        return "fr_FR"
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower().replace("_", "-")
        if tag.startswith("en"):
            return "en_US" if tag == "en-us" else "en_GB"
    return "en_GB"


def _formatters(locale: str, gettext: Callable[[str], str]) -> dict[str, Callable[..., str]]:
    """The one set of helpers every template writes dates, numbers and codes with."""

    # Times are stored in UTC and shown on the hospital's wall clock (Europe/Paris).
    def when(value: dt.datetime | None, fmt: str = "short") -> str:
        return "" if value is None else format_datetime(value, fmt, tzinfo=localtime.ZONE, locale=locale)

    def day(value: dt.date | str | None, fmt: str = "medium") -> str:
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            value = dt.date.fromisoformat(value[:10])
        return format_date(value, fmt, locale=locale)

    def hour(value: dt.datetime | None) -> str:
        return "" if value is None else format_datetime(value, "HH:mm", tzinfo=localtime.ZONE, locale=locale)

    def weekday(value: dt.date | None, fmt: str = "EEEE") -> str:
        return "" if value is None else format_date(value, fmt, locale=locale)

    def number(value: float | int | str | None, decimals: int | None = None) -> str:
        if value is None or value == "":
            return ""
        if decimals is None:
            return format_decimal(value, locale=locale)
        pattern = "#,##0." + "0" * decimals if decimals > 0 else "#,##0"
        return format_decimal(value, format=pattern, locale=locale)

    def money(cents: int | None, currency: str | None = "EUR") -> str:
        """44,26 € in French, €44.26 in English: amounts are kept in cents."""
        return format_currency((cents or 0) / 100, currency or "EUR", locale=locale)

    def word(group: str, code: str | None) -> str:
        return label(gettext, group, code)

    def roles(codes: Any) -> str:
        return ", ".join(label(gettext, "role", str(getattr(c, "value", c))) for c in codes or ())

    def timeline(source: str, what: str) -> str:
        return timeline_sentence(gettext, source, what)

    decimal_sign = get_decimal_symbol(locale)

    def measure(text: str | float | None) -> str:
        """A measured value or a range as the results print it ("39.1", "36.1–37.8"), with
        the locale's decimal sign (39,1 in French); words are left as they are."""
        if text is None:
            return ""
        return DECIMAL_POINT.sub(rf"\1{decimal_sign}\2", text if isinstance(text, str) else f"{text:g}")

    def amount_field(cents: int | None) -> str:
        """An amount to prefill a form's field with: 70,32 in French, 70.32 in English (no
        grouping: the field reads back what it shows)."""
        return f"{(cents or 0) / 100:.2f}".replace(".", decimal_sign)

    def unit(code: str | None) -> str:
        """A UCUM unit code as a clinician writes it (Cel is °C, mm[Hg] is mmHg)."""
        return UNIT_DISPLAY.get(code or "", code or "")

    def postal(address: dict[str, str] | None) -> str:
        """An address as written on an envelope: street, then postcode and town (stored in
        any key order), other parts after; the country only when it is not France."""
        if not address:
            return ""
        town = " ".join(p for p in (address.get("postalCode"), address.get("city")) if p)
        rest = [v for k, v in address.items() if k not in {"line", "postalCode", "city", "country"}]
        country = address.get("country", "")
        abroad = [country] if country and country.upper() not in {"FR", "FRA", "FRANCE"} else []
        return ", ".join(p for p in (address.get("line"), town, *rest, *abroad) if p)

    return {
        "when": when,
        "day": day,
        "hour": hour,
        "weekday": weekday,
        "number": number,
        "money": money,
        "label": word,
        "role_names": roles,
        "timeline_sentence": timeline,
        "postal_address": postal,
        "measure": measure,
        "amount_field": amount_field,
        "unit": unit,
    }


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    language = language_of(request)
    tr = translations(language)
    page = _environment().get_template(template)
    values: dict[str, Any] = {
        "request": request,
        "lang": language,
        "languages": LANGUAGES,
        "_": tr.gettext,
        "ngettext": tr.ngettext,
        "csrf_field": CSRF_FIELD,
        "csrf_token": request.cookies.get(CSRF_COOKIE, ""),
        "actor": getattr(request.state, "actor", None),
        "break_glass_active": None,
        "glass_patient": None,
        "setting_up": False,  # a handover session: no navigation, nothing else is open to it
        "path": request.url.path,
        "locale": locale_of(request, language),
        # Gate, step-up, containment and detection messages in the reader's language.
        "say": lambda message: say(message, language),
        **_formatters(locale_of(request, language), tr.gettext),
    }
    values.update(context or {})
    response = HTMLResponse(page.render(values), status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    targets = [o for o in values.get("form_origins") or () if ORIGIN.fullmatch(o)]
    if targets:
        # A form whose answer redirects to a registered app (SMART launch, consent): CSP's
        # form-action also governs that redirect, so those origins, and only them, are named.
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
            "form-action 'self'", "form-action 'self' " + " ".join(sorted(set(targets)))
        )
    response.headers["Content-Language"] = language
    response.headers["Vary"] = "Cookie, Accept-Language"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
