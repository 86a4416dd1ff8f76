"""A real browser for the dashboard tests: Debian's Chromium through its own chromedriver
(no browser download), headless, dark colour scheme, the page's console log kept."""

from __future__ import annotations

from typing import Any

from conftest import require_executable, require_module


def require_browser() -> None:
    """Fail (under CI) or skip before anything starts when the browser is missing."""
    require_executable("chromium")
    require_executable("chromedriver")
    require_module("selenium")


def open_chromium(width: int, height: int, *arguments: str) -> Any:
    """A headless Chromium window of ``width`` x ``height`` CSS pixels (scale 1)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require_executable("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
        *arguments,
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(require_executable("chromedriver")), options=options)
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    return driver
