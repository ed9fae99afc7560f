"""Fixtures for the review console's browser tests (a pytest plugin: tests/conftest.py loads it)."""
from __future__ import annotations

import pytest

from tests.review.signin import SignedIn, launch_chromium


@pytest.fixture(scope="module")
def chromium():
    playwright, browser = launch_chromium()
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def sign_in(chromium, stack, tmp_path_factory):
    """sign_in(user, groups) -> SignedIn, in a fresh browser context; closed after the test."""
    opened: list[SignedIn] = []
    shots = tmp_path_factory.mktemp("screenshots")

    def make(user: str, groups=()) -> SignedIn:
        signed = SignedIn(chromium, stack.console_url, user, groups, shots)
        opened.append(signed)
        return signed

    yield make
    for signed in opened:
        signed.close()
