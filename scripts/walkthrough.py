"""Each role's day walked in Chromium on a fresh demo, through the pages' own forms, in one language.

Starts `carnet demo` on a free port of 127.0.0.1 in a temporary folder with the hospital's clock at
10:00 (as scripts/screenshots.py does), signs each role in through the login form (password and
authenticator code from the demo's credentials file) and does its day: the physician records a
penicillin allergy, prescribes amoxicillin and reads the class warning, prescribes anyway with a
reason, reads the results and prints the prescription; the front desk checks a patient in,
registers a patient and books them in the calendar grid with a reason; billing prints an invoice,
records a part payment and prints its receipt; the security officer, integration, administrator and the
patient read their pages. Every page is saved as PNG (and each PDF's first page) for a person to
look at, and the walk stops on any answer of 500 or more, or a page's script error.

    .venv/bin/python scripts/walkthrough.py --language fr --out /tmp/walk-fr
    .venv/bin/python scripts/walkthrough.py --language en --out /tmp/walk-en
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyotp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshots as shots

UUID = r"[0-9a-f-]{36}"


class Walk:
    def __init__(self, browser: Any, origin: str, accounts: list[dict[str, Any]], out: Path, language: str):
        self.browser, self.origin, self.accounts, self.out = browser, origin, accounts, out
        self.language = language
        self.locale = "fr-FR" if language == "fr" else "en-GB"
        self.problems: list[str] = []
        self.count = 0

    def person(self, role: str) -> dict[str, Any]:
        return next(a for a in self.accounts if role in a.get("roles", ()))

    def open(self, account: dict[str, Any] | None) -> Any:
        """A browser of this person's own (one browser per person, as at the hospital)."""
        name = account["username"] if account else "anyone"
        context = self.browser.new_context(
            viewport={"width": 1280, "height": 860},
            locale=self.locale,
            user_agent=f"carnet-walkthrough ({name})",
        )
        context.add_cookies([{"name": "carnet_lang", "value": self.language, "url": self.origin}])
        page = context.new_page()
        page.on("pageerror", lambda error: self.problems.append(f"{page.url}: script error {error}"))
        page.on(
            "response",
            lambda r: r.status >= 500 and self.problems.append(f"{r.url}: answered {r.status}"),
        )
        if account is not None:
            self.sign_in(page, account)
        return page

    def sign_in(self, page: Any, account: dict[str, Any]) -> None:
        page.goto(self.origin + "/login")
        page.fill("#username", account["username"])
        page.fill("#password", account["password"])
        if account.get("totp_secret"):
            at = time.time() + shots.CLOCK_OFFSET
            page.fill("#otp", pyotp.TOTP(account["totp_secret"]).at(at))
        page.locator("#login-form button[type=submit]").click()
        page.wait_for_url(lambda url: "/login" not in url)

    def shot(self, page: Any, name: str, *, full: bool = False) -> None:
        page.wait_for_load_state("networkidle")
        self.count += 1
        path = self.out / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full)
        shots._small(path)
        print(f"{path.name}  {page.url.removeprefix(self.origin)}")

    def go(self, page: Any, path: str, name: str, *, full: bool = False) -> None:
        answer = page.goto(self.origin + path)
        if answer is None or answer.status >= 400:
            self.problems.append(f"{path}: answered {answer and answer.status}")
        self.shot(page, name, full=full)

    def pdf(self, page: Any, action: str, name: str) -> None:
        """A print button's PDF, its first page as PNG."""
        csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "carnet_csrf")
        answer = page.request.post(self.origin + action, form={"csrf_token": csrf})
        if answer.status != 200 or answer.headers.get("content-type") != "application/pdf":
            self.problems.append(f"{action}: answered {answer.status} {answer.headers.get('content-type')}")
            return
        with tempfile.TemporaryDirectory() as tmp:
            pdf = Path(tmp) / "print.pdf"
            pdf.write_bytes(answer.body())
            self.count += 1
            target = self.out / f"{self.count:02d}-{name}"
            pdftoppm = shutil.which("pdftoppm")
            if pdftoppm is None:
                self.problems.append("pdftoppm not found: PDFs not rendered")
                return
            subprocess.run(  # noqa: S603 (our own file names, no shell)
                [pdftoppm, "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(target)],
                check=True,
            )
            shots._small(target.with_suffix(".png"), colors=32)
            print(f"{target.name}.png  (PDF of {action})")

    # -- the days ------------------------------------------------------------------------------

    def physician(self) -> None:
        page = self.open(None)
        self.go(page, "/login", "sign-in")
        self.sign_in(page, self.person("physician"))
        self.shot(page, "physician-day", full=True)
        charts = list(dict.fromkeys(re.findall(rf'href="(/patients/{UUID})"', page.content())))
        if not charts:
            self.problems.append("physician: nobody on the day list")
            return
        # The results of the first patient on the list who has some.
        for chart in charts:
            page.goto(self.origin + chart + "/sections/results")
            if page.locator("svg").count():
                break
        self.shot(page, "physician-results-trend", full=True)
        chart = charts[0]
        self.go(page, chart, "physician-chart")
        # A penicillin allergy recorded from the catalogue, then amoxicillin prescribed.
        page.goto(self.origin + chart + "/sections/allergies")
        choices = page.locator("#allergy-catalogue option").evaluate_all("os => os.map(o => o.value)")
        penicillins = next((c for c in choices if "J01C" in c and "J01CA" not in c), None)
        if penicillins is None:
            self.problems.append(f"no penicillin class in the allergy catalogue: {choices[:5]}")
            return
        page.locator("summary", has=page.locator("text=/allerg/i")).first.click()
        page.fill("#allergy-substance", penicillins)
        page.select_option("#allergy-criticality", "high")
        page.locator("#allergy-substance").locator("xpath=ancestor::form").locator(
            "button[type=submit]"
        ).click()
        page.wait_for_load_state("networkidle")
        self.shot(page, "physician-allergy-recorded")
        page.goto(self.origin + chart + "/sections/prescriptions")
        drugs = page.locator("#drug-catalogue option").evaluate_all("os => os.map(o => o.value)")
        amoxicillin = next(c for c in drugs if c.endswith("J01CA04"))
        page.locator("#rx-medication").locator("xpath=ancestor::details").locator("summary").click()
        page.fill("#rx-medication", amoxicillin)
        page.fill(
            "#rx-dosage", "1 g x 3 / 7 j" if self.language == "fr" else "1 g three times a day for 7 days"
        )
        form = page.locator("#rx-medication").locator("xpath=ancestor::form")
        form.locator("button[type=submit]").click()
        page.wait_for_load_state("networkidle")
        if not page.locator("#rx-override").count():
            self.problems.append("amoxicillin for a penicillin allergy: no warning")
        self.shot(page, "physician-allergy-class-warning", full=True)
        if page.locator("#rx-override").count():
            page.fill(
                "#rx-override",
                "Tolérée en 2023, avis allergologue" if self.language == "fr" else "Tolerated in 2023",
            )
            page.locator("#rx-override").locator("xpath=ancestor::form").locator(
                "button[type=submit]"
            ).click()
            page.wait_for_load_state("networkidle")
            self.shot(page, "physician-prescribed-anyway", full=True)
        action = page.locator('form[action^="/print/prescriptions/"]').first.get_attribute("action")
        if action:
            self.pdf(page, action, "physician-prescription-pdf")
        self.go(page, chart + "/sections/orders", "physician-lab-orders")
        self.go(page, "/account", "physician-account")
        page.context.close()

    def nurse(self) -> None:
        page = self.open(self.person("nurse"))
        self.shot(page, "nurse-day")
        charts = re.findall(rf'href="(/patients/{UUID})"', page.content())
        self.go(page, "/ward", "nurse-ward")
        if charts:
            self.go(page, charts[0], "nurse-chart")
            self.go(page, charts[0] + "/sections/prescriptions", "nurse-prescriptions")
        page.context.close()

    def front_desk(self) -> None:
        page = self.open(self.person("front_desk"))
        self.shot(page, "desk-home")
        self.go(page, "/desk/arrivals", "desk-arrivals")
        check_in = page.locator('form[action$="/check-in"] button[type=submit]')
        if check_in.count():
            check_in.first.click()
            page.wait_for_load_state("networkidle")
            self.shot(page, "desk-checked-in")
        self.go(page, "/desk", "desk-registration")
        page.fill("#family", "Lefèvre")
        page.fill("#given", "Aurore")
        page.fill("#birth_date", "1988-03-14")
        page.fill("#phone", "06 11 22 33 44")
        page.fill("#line", "12 rue des Lilas")
        page.fill("#city", "Rivière-les-Bains")
        page.locator("#family").locator("xpath=ancestor::form").locator("button[type=submit]").click()
        page.wait_for_load_state("networkidle")
        self.shot(page, "desk-registered", full=True)
        booking = page.locator('a[href^="/desk/calendar?patient="]')
        if not booking.count():
            self.problems.append(f"no booking link on {page.url}")
            return
        booking.first.click()
        page.wait_for_load_state("networkidle")
        self.shot(page, "desk-calendar-for-patient", full=True)
        # The practitioner's week, then a free slot, then the reason.
        page.locator("table a").first.click()
        page.wait_for_load_state("networkidle")
        self.shot(page, "desk-calendar-week", full=True)
        free = page.locator("td.slot.free a")
        if not free.count():
            self.problems.append("no free slot to book this week")
            return
        free.nth(free.count() // 2).click()
        page.wait_for_load_state("networkidle")
        page.fill("#book-reason", "Première consultation" if self.language == "fr" else "First visit")
        page.locator("#book-form button[type=submit]").click()
        page.wait_for_load_state("networkidle")
        self.shot(page, "desk-booked", full=True)
        page.context.close()

    def billing(self) -> None:
        page = self.open(self.person("billing"))
        self.shot(page, "billing-home")
        self.go(page, "/billing/worklist", "billing-worklist")
        action = page.locator('form[action^="/print/invoices/"]').first.get_attribute("action")
        if action:
            self.pdf(page, action, "billing-invoice-pdf")
        pay = page.locator('form[action$="/payments"]')
        if pay.count():
            # A part payment: the invoice stays on the list, its receipt printable there.
            pay.first.locator("input[name=amount]").fill("10,00" if self.language == "fr" else "10.00")
            pay.first.locator("button[type=submit]").click()
            page.wait_for_load_state("networkidle")
            self.shot(page, "billing-paid", full=True)
            receipt = page.locator('form[action^="/print/payments/"]')
            if receipt.count():
                self.pdf(page, receipt.first.get_attribute("action"), "billing-receipt-pdf")
            else:
                self.problems.append(f"no receipt to print after a payment on {page.url}")
        page.context.close()

    def officer(self) -> None:
        page = self.open(self.person("security_officer"))
        self.shot(page, "security-console")
        self.go(page, "/security/exports", "security-exports")
        self.go(page, "/security/audit", "security-audit-chain")
        self.go(page, "/security/incident", "security-incident")
        page.context.close()

    def others(self) -> None:
        for role, paths in (
            ("integration", ("/integration",)),
            ("system_administrator", ("/admin", "/account")),
            ("patient", ("/portal", "/portal/access-log")),
        ):
            page = self.open(self.person(role))
            for path in paths:
                self.go(page, path, f"{role.replace('_', '-')}{path.replace('/', '-')}", full=True)
            page.context.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--language", choices=("fr", "en"), default="fr")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clock", default="10:00")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = shots._free_port()
    origin = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="carnet-walk-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "demo.log"
        env = os.environ | {"CARNET_ENV": "demo", "CARNET_VAR_DIR": str(tmp), "CARNET_LOG_FORMAT": "text"}
        with log.open("wb") as sink:
            server = subprocess.Popen(  # noqa: S603 (the venv's own carnet, no shell)
                [
                    str(shots.CARNET),
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
            shots._clock_offset(log, args.clock)
            shots._wait_until_up(origin, server, log, 900)
            accounts = json.loads((tmp / "demo-credentials.json").read_text())
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=shots.CHROMIUM,
                    headless=True,
                    args=[*shots.ARGS, f"--lang={'fr-FR' if args.language == 'fr' else 'en-GB'}"],
                )
                walk = Walk(browser, origin, accounts, args.out, args.language)
                try:
                    for day in (
                        walk.physician,
                        walk.nurse,
                        walk.front_desk,
                        walk.billing,
                        walk.officer,
                        walk.others,
                    ):
                        try:
                            day()
                        except Exception as error:
                            walk.problems.append(f"{day.__name__}: {type(error).__name__}: {error}")
                finally:
                    browser.close()
            print("\n".join(["", "problems:", *walk.problems]) if walk.problems else "\nno problem found")
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
