"""Signing in to the review console the way a person does: through the dev issuer's login form.

``browser_sign_in`` drives headless Chromium (Debian's /usr/bin/chromium, through Playwright; no
browser is ever downloaded); ``client_sign_in`` does the same redirects with httpx, for tests that
only need a signed-in session (the authorization code flow with PKCE either way).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Screenshots go to the test's folder; JITGATE_SCREENSHOTS=docs/screenshots refreshes the README's.
SCREENSHOTS = os.environ.get("JITGATE_SCREENSHOTS", "")


def launch_chromium():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/install.sh installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    return playwright, browser


class SignedIn:
    """A browser context signed in as one person; collects console errors and CSP violations."""

    def __init__(self, browser, console_url: str, user: str, groups, shots: Path):
        self.context = browser.new_context(viewport={"width": 1366, "height": 900})
        self.page = self.context.new_page()
        self.console_url = console_url
        self.problems: list[str] = []
        self.shots = shots
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page = self.page
        response = page.goto(console_url + "/")
        assert "/interaction/" in page.url, f"expected the dev issuer's sign-in form, got {page.url}"
        page.get_by_label("User (email)").fill(user)
        page.get_by_label("Groups (comma-separated)").fill(",".join(groups))
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        self.landing_status = response.status if response else None

    def goto(self, path: str):
        return self.page.goto(self.console_url + path)

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(SCREENSHOTS) / path.name)
        return path

    def csp_violations(self) -> list[str]:
        return [p for p in self.problems if "Content Security Policy" in p]

    def close(self) -> None:
        self.context.close()


def client_sign_in(console_url: str, user: str, groups) -> tuple[httpx.Client, httpx.Response]:
    """An httpx client with the console's session cookie; returns it and the landing response."""
    client = httpx.Client(follow_redirects=True, timeout=20)
    form_page = client.get(console_url + "/")
    action = re.search(r'<form method="post" action="([^"]+)"', form_page.text)
    assert action and "/interaction/" in str(form_page.url), form_page.text[:500]
    issuer = f"{form_page.url.scheme}://{form_page.url.netloc.decode()}"
    landing = client.post(issuer + action.group(1), data={"username": user, "groups": ",".join(groups)})
    return client, landing


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)
