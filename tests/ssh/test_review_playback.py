"""An SSH terminal session played back in the review console (asciinema-player in headless Chromium)."""
from __future__ import annotations

import pexpect
from playwright.sync_api import expect

from tests.ssh.helpers import sealed_session
from tests.ssh.test_ssh_terminal import PROMPT, spawn_shell


def test_terminal_plays_back_in_the_review_console(ssh_targets, token, stack, sign_in):
    user = "player@example.com"
    child = spawn_shell(ssh_targets, token, user)
    child.sendline("echo played-$((6*7))-back")
    child.expect("played-42-back")
    child.expect(PROMPT)
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    session_id = sealed_session(stack, user)

    reviewer = sign_in("rita@example.com", ("security",))
    page = reviewer.page
    reviewer.goto(f"/sessions/{session_id}")
    assert "badge ok" in page.locator("#verification").get_attribute("class")
    page.wait_for_selector(".player[data-ready='1'] .ap-player")
    # keyboard only: Tab to the player's Play button and press Enter
    play = page.get_by_role("button", name="Play")
    play.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".player pre.ap-term-text")).to_contain_text("played-42-back", timeout=30000)
    reviewer.shot("session-terminal")
    assert reviewer.csp_violations() == [], reviewer.problems
