"""A real headless browser (Debian's chromium and chromedriver) for the admin console's tests."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")


def start_browser():
    """A headless Chrome driver; the test is skipped without chromium (failed under CI)."""
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
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver, condition, timeout: float = 10.0):
    """Wait until `condition` holds; the page re-renders its table, so a stale element means: look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)
