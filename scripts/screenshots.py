"""Screenshots of each role's main page for the README tour, from a seeded demo on loopback.

Starts `carnet demo` (CARNET_ENV=demo) in a temporary folder on a free port of 127.0.0.1, signs
each role in the way the login page does (password and authenticator code, from the demo's
credentials file), and captures its main page in Debian's Chromium (Playwright): the physician's
day and a chart, a nurse's day, the front desk, billing, the security console, the integration
log, administration and the patient portal; then prints a prescription from the chart and renders
the PDF's first page to PNG (pdftoppm, Debian's poppler-utils). The PNGs are reduced to a small
palette so the repository stays light. Nothing leaves the machine: the demo listens on loopback.

    .venv/bin/python scripts/screenshots.py                        # docs/screenshots/role-*.png, French
    .venv/bin/python scripts/screenshots.py --language en --out /tmp/shots --patients 300
    .venv/bin/python scripts/screenshots.py --only role-nurse-ward     # one page of the tour
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zoneinfo
from pathlib import Path
from typing import Any

import httpx
import pyotp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CARNET = Path(sys.executable).parent / "carnet"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# role -> its pages (file name, path), the main page first
MAIN_PAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "physician": (("role-physician-day", "/day"),),
    "nurse": (("role-nurse-day", "/day"), ("role-nurse-ward", "/ward")),
    "front_desk": (
        ("role-front-desk", "/desk"),
        ("role-front-desk-arrivals", "/desk/arrivals"),
        ("role-front-desk-calendar", "/desk/calendar"),
    ),
    "billing": (("role-billing", "/billing"), ("role-billing-worklist", "/billing/worklist")),
    "security_officer": (("role-security-console", "/security"),),
    "integration": (("role-integration-log", "/integration"),),
    "system_administrator": (("role-administration", "/admin"),),
    "patient": (("role-patient-portal", "/portal"),),
}
# Seconds from this machine's time to the demo's (set by --clock).
CLOCK_OFFSET = 0.0
PATIENT_LINK = re.compile(r'href="(/patients/[0-9a-f-]{36})"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(origin: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the demo stopped (exit {server.returncode}); see {log}")
        try:
            if httpx.get(origin + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the demo did not answer within {timeout:.0f} s; see {log}")


def _sign_in(context: Any, origin: str, account: dict[str, Any]) -> str:
    """POST /auth/login as the login page does (the Origin header is the page's own), in the
    browser's context so the session cookie lands there; returns the CSRF token."""
    # The authenticator's code at the demo's time (its clock was moved to --clock).
    at = time.time() + CLOCK_OFFSET
    code = pyotp.TOTP(account["totp_secret"]).at(at) if account.get("totp_secret") else ""
    answer = context.request.post(
        origin + "/auth/login",
        data={"username": account["username"], "password": account["password"], "otp": code},
        headers={"Origin": origin},
    )
    if answer.status != 200:
        raise SystemExit(f"sign-in of {account['username']} answered {answer.status}: {answer.text()[:200]}")
    return str(answer.json()["csrfToken"])


def _small(path: Path, colors: int = 128) -> None:
    """A screenshot with a small palette: a few dozen kB instead of a few hundred."""
    with Image.open(path) as image:
        reduced = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    reduced.save(path, optimize=True)


def _shoot(page: Any, out: Path, name: str) -> Path:
    page.wait_for_load_state("networkidle")
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    _small(path)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def _print_prescription(page: Any, origin: str, out: Path, csrf: str, tmp: Path) -> bool:
    """The chart's first print button of a prescription, its PDF's first page as PNG."""
    forms = page.locator('form[action^="/print/prescriptions/"]')
    if forms.count() == 0:
        return False
    action = forms.first.get_attribute("action")
    answer = page.request.post(origin + action, form={"csrf_token": csrf})
    if answer.status != 200 or answer.headers.get("content-type") != "application/pdf":
        raise SystemExit(f"printing {action} answered {answer.status}: {answer.text()[:200]}")
    pdf = tmp / "prescription.pdf"
    pdf.write_bytes(answer.body())
    target = out / "role-physician-prescription-pdf"
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        print("pdftoppm not found (apt-get install poppler-utils): the printed prescription is not rendered")
        return True
    subprocess.run(  # noqa: S603 (our own file names, no shell)
        [pdftoppm, "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(target)],
        check=True,
    )
    _small(target.with_suffix(".png"), colors=32)
    print(f"wrote {target.with_suffix('.png')}")
    return True


def _clock_offset(log: Path, wanted: str) -> None:
    """The demo moves its clock to `wanted` as it starts and says so: from that moment, the
    seconds between this machine's time and the demo's (for the authenticator codes)."""
    global CLOCK_OFFSET
    deadline = time.monotonic() + 120
    while "the hospital's clock starts at" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit("the demo did not start its clock")
        time.sleep(0.05)
    now = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Paris"))
    hour, minute = (int(part) for part in wanted.split(":"))
    CLOCK_OFFSET = (now.replace(hour=hour, minute=minute, second=0, microsecond=0) - now).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=600, help="patients of the demo hospital")
    parser.add_argument("--language", choices=("fr", "en"), default="fr")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the demo to serve")
    # A daytime clock: at night the arrivals list and the day lists are empty.
    parser.add_argument(
        "--clock", default="10:00", help="the hospital's wall clock at the start (HH:MM, Paris)"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="only these screenshots (file names without .png)"
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="carnet-shots-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "demo.log"
        env = os.environ | {
            "CARNET_ENV": "demo",
            "CARNET_VAR_DIR": str(tmp),
            "CARNET_ORIGIN": origin,
            "CARNET_LOG_FORMAT": "text",
        }
        with log.open("wb") as sink:
            server = subprocess.Popen(  # noqa: S603 (the venv's own carnet, no shell)
                [
                    str(CARNET),
                    "demo",
                    "--patients",
                    str(args.patients),
                    "--port",
                    str(port),
                    "--clock",
                    args.clock,
                ],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        try:
            _clock_offset(log, args.clock)
            _wait_until_up(origin, server, log, args.timeout)
            accounts: list[dict[str, Any]] = json.loads((tmp / "demo-credentials.json").read_text())
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                try:
                    _tour(browser, origin, accounts, args.out, args.language, tmp, set(args.only))
                finally:
                    browser.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def _tour(
    browser: Any,
    origin: str,
    accounts: list[dict[str, Any]],
    out: Path,
    language: str,
    tmp: Path,
    only: set[str] | None = None,
) -> None:
    locale = "fr-FR" if language == "fr" else "en-GB"
    wanted = only or set()
    if not wanted or "role-sign-in" in wanted:
        context = browser.new_context(viewport={"width": 1280, "height": 860}, locale=locale)
        context.add_cookies([{"name": "carnet_lang", "value": language, "url": origin}])
        page = context.new_page()
        page.goto(origin + "/login")
        _shoot(page, out, "role-sign-in")
        context.close()
    for role, every in MAIN_PAGES.items():
        # --only: the role's pages named (the same sign-in and path as the whole tour).
        pages = tuple(p for p in every if not wanted or p[0] in wanted)
        if not pages:
            continue
        (name, path), more = pages[0], pages[1:]
        holders = [a for a in accounts if role in a.get("roles", ())]
        if not holders:
            print(f"no {role} account in the demo: {name} skipped")
            continue
        # A physician with patients on today's list shows a chart too (and prints from it).
        # A physician (or nurse) with patients on the page shows a busy day, not an empty one.
        busy_roles = ("physician", "nurse")
        for account in holders[: 8 if role in busy_roles else 1]:
            # One browser per person: many accounts from one address and client within minutes
            # are what detection takes for stolen sessions used together (a campaign).
            context = browser.new_context(
                viewport={"width": 1280, "height": 860},
                locale=locale,
                user_agent=f"carnet-screenshots ({account['username']})",
            )
            context.add_cookies([{"name": "carnet_lang", "value": language, "url": origin}])
            csrf = _sign_in(context, origin, account)
            page = context.new_page()
            page.goto(origin + path)
            charts = PATIENT_LINK.findall(page.content()) if role == "physician" else []
            empty = not PATIENT_LINK.search(page.content())
            if role in busy_roles and empty and account is not holders[:8][-1]:
                context.close()
                continue
            _shoot(page, out, name)
            for other, where in more:
                page.goto(origin + where)
                _shoot(page, out, other)
            if charts:
                for chart in dict.fromkeys(charts):
                    page.goto(origin + chart)
                    page.wait_for_load_state("networkidle")
                    if _print_prescription(page, origin, out, csrf, tmp):
                        _shoot(page, out, "role-physician-chart")
                        break
            context.close()
            break


if __name__ == "__main__":
    main()
