"""The bank's web UI in headless Chromium: open an account page, register a key, send a Pix.

Drives the Debian ``chromium`` (never a downloaded browser) with Playwright.
Screenshots land in the test's tmp dir, and in ``$RESILIENCE_ARTIFACTS`` when set.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples.codepix.bank.domain import KNOWN_BANKS
from examples.codepix.bank.process import HttpThread
from examples.codepix.demo import EmbeddedNetwork, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _browser_or_skip() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install it with `apt-get install chromium`"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def page() -> Iterator[Any]:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 1400})
        finally:
            browser.close()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[EmbeddedNetwork, dict[str, str]]]:
    net = EmbeddedNetwork(tmp_path, (KNOWN_BANKS["001"], KNOWN_BANKS["002"]))
    servers = {
        code: HttpThread(bank.web_app(), "127.0.0.1:0").start() for code, bank in net.banks.items()
    }
    try:
        yield net, {code: f"http://127.0.0.1:{s.port}" for code, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        net.close()


def save(page: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    artifacts = os.environ.get("RESILIENCE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / name)
    return shot


def test_send_a_pix_in_the_browser_and_watch_both_balances(
    page: Any, sites: tuple[EmbeddedNetwork, dict[str, str]], tmp_path: Path
) -> None:
    net, urls = sites
    bob = net.banks["002"].open_account("Bob", 1_000)
    bob_key = str(uuid.uuid4())
    net.banks["002"].register_key(bob.id, "random", bob_key)

    # BBX: open Ann's account through the form
    page.goto(urls["001"])
    assert "BBX" in page.title()
    page.fill("input[name=owner_name]", "Ann")
    page.fill("input[name=deposit]", "250.00")
    page.click("#open-account")
    assert "opened" in page.inner_text("[role=status]")
    assert page.inner_text("#balance") == "R$ 250.00"

    # a malformed key is refused on the page, with the reason and a 4xx
    page.select_option("#key-form select[name=kind]", "email")
    page.fill("#key-form input[name=key]", "not an e-mail")
    with page.expect_navigation() as refused:
        page.click("#register-key")
    assert refused.value.status == 422
    assert "e-mail" in page.inner_text("[role=alert]")

    page.fill("#key-form input[name=key]", "ann@bbx.example")
    page.click("#register-key")
    assert "ann@bbx.example" in page.inner_text("[role=status]")

    # send R$ 12.34 to Bob's random key
    page.select_option("#send-form select[name=pix_key_kind]", "random")
    page.fill("#send-form input[name=pix_key]", bob_key)
    page.fill("#send-form input[name=amount]", "12.34")
    page.fill("#send-form input[name=description]", "pizza")
    page.click("#send")
    assert "sent" in page.inner_text("[role=status]")
    assert page.inner_text("#balance") == "R$ 237.66"  # debited at once

    def completed() -> bool:
        page.reload()
        return "completed" in page.inner_text("#transfers")

    wait_until(completed, timeout=20)
    assert "-12.34" in page.inner_text("#statement")
    header = page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
    assert header == "rgb(11, 61, 145)"  # BBX's #0b3d91
    save(page, tmp_path, "codepix-bbx-account.png")

    # BBX's account list: Ann, with her balance after the transfer, linking to her page
    page.goto(urls["001"])
    rows = page.inner_text("#accounts tbody")
    assert "Ann" in rows
    assert "R$ 237.66" in rows
    save(page, tmp_path, "codepix-bbx-accounts.png")
    page.click("#accounts a:text('Ann')")
    assert page.inner_text("#balance") == "R$ 237.66"

    # CTD: Bob sees the money, on a page in CTD's colours
    page.goto(f"{urls['002']}/accounts/{bob.id}")
    assert page.inner_text("#balance") == "R$ 22.34"
    assert "Ann @ 001" in page.inner_text("#transfers")
    header = page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
    assert header == "rgb(122, 31, 92)"  # CTD's #7a1f5c, not BBX's blue
    assert save(page, tmp_path, "codepix-ctd-account.png").stat().st_size > 10_000
