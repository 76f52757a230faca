"""The admin console in a real headless browser (Debian's chromium and chromedriver): it loads,
shows a suspended customer with its usage and timeline, and its reinstate button works."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.conftest import ADMIN_TOKEN, ManualClock
from tests.test_enforcement import ADMIN, T0, enforcement_config, statuses
from tests.test_auth import hs_token

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and CHROMEDRIVER):
        message = "chromium and chromedriver are needed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 10.0):
    """Wait until `condition` holds; the page re-renders its table, so a stale element means: look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


async def test_the_console_shows_a_suspended_customer_and_reinstates_it(browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By

    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["plans"]["standard"]["limits"].append(
        {"name": "monthly", "kind": "quota", "metric": "requests", "period": "month", "limit": 1000})
    gateway = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 1) == [200]  # some usage to show
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "scraping the portal"}) as response:
        assert response.status == 201

    def run(step):
        return asyncio.to_thread(step)

    def sign_in_and_find_acme():
        browser.get(f"{gateway.admin_url}/console")
        browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        return wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-customer="acme"]'))[0]

    row = await run(sign_in_and_find_acme)
    assert (await run(lambda: row.find_element(By.CSS_SELECTOR, ".state").text)) == "suspended"
    assert "scraping the portal" in await run(lambda: row.text)
    bar = await run(lambda: row.find_element(By.CSS_SELECTOR, ".quota progress"))
    assert (await run(lambda: (bar.get_attribute("value"), bar.get_attribute("max")))) == ("1", "1000")

    def open_timeline():
        browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] button.show-timeline').click()
        return wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#timeline li[data-kind="state_change"]'))

    (change,) = await run(open_timeline)
    assert "ok → suspended" in await run(lambda: change.text)

    def reinstate():
        browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] button.reinstate').click()
        wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] .state').text == "ok")

    clock.advance(1)  # a later decision than the suspension
    await run(reinstate)
    async with client.get(f"{gateway.admin_url}/admin/customers/acme", headers=ADMIN) as response:
        assert (await response.json())["state"] == "ok"
    clock.advance(1)
    assert await statuses(client, gateway, token, 1) == [200]


async def test_the_console_page_runs_no_inline_script(client, start_gateway, upstream):
    gateway = await start_gateway(enforcement_config(upstream))
    async with client.get(f"{gateway.admin_url}/console") as response:
        assert response.status == 200
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        page = await response.text()
    assert "<script>" not in page and 'src="/console/console.js"' in page
    async with client.get(f"{gateway.admin_url}/console/secrets.txt") as response:
        assert response.status == 404
