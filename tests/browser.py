"""Headless Chromium for the admin tests, driven by Selenium through chromedriver.

Debian's ``chromium`` and ``chromium-driver`` packages (.ci/run installs them);
no browser is downloaded. ``browser_or_skip()`` gives a driver, or skips the test
saying what is missing.
"""

import shutil
import time

import pytest

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def browser_or_skip():
    """A headless Chromium driver; skips the test when Chromium or its driver is absent."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium or chromedriver is not installed (apt-get install chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    # The driver path is given: Selenium Manager must not look for (or download) one.
    service = webdriver.ChromeService(executable_path=driver)
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(300)  # an eager sync runs inside the POST
    return browser


def by_css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def login(browser, base_url, username, password):
    """Log in through the admin's login form."""
    browser.get(f"{base_url}/admin/login/")
    by_css(browser, "#id_username")[0].send_keys(username)
    by_css(browser, "#id_password")[0].send_keys(password)
    by_css(browser, "#login-form [type=submit]")[0].click()
    wait_for(lambda: "/admin/login/" not in browser.current_url, what="the login to finish")


def messages(browser):
    """The texts of the admin's messages on the current page."""
    return [li.text for li in by_css(browser, "ul.messagelist li")]


def wait_for(predicate, timeout=120, every=0.3, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout} s for {what}")
