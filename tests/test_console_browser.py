"""The console's web page in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium — no
browser download) against a real daemon and console on the stage clip: sign in with a token, enrol Lin-Manuel
Miranda from a file upload plus a photo taken with the browser's camera (Chromium's fake capture device playing his
photo), see his grant appear live in the decisions, look at cameras and doors, erase him. Screenshots are saved in
the test's folder (``FACEGATE_SCREENSHOTS`` names another) to be looked at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA
from console_process import ConsoleProcess
from daemon_process import Daemon
from mosquitto import Subscriber
from test_console_e2e import MIRANDA, PREFIX, site_config

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def fake_camera(photo: Path, out: Path, size: tuple[int, int] = (640, 480), frames: int = 30) -> Path:
    """A Y4M clip (the format Chromium's fake capture device plays) of ``photo`` letterboxed into ``size``."""
    image = cv2.imread(str(photo))
    w, h = size
    scale = min(w / image.shape[1], h / image.shape[0])
    resized = cv2.resize(image, (int(image.shape[1] * scale) // 2 * 2, int(image.shape[0] * scale) // 2 * 2))
    canvas = np.zeros((h, w, 3), np.uint8)
    y, x = (h - resized.shape[0]) // 2, (w - resized.shape[1]) // 2
    canvas[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    i420 = cv2.cvtColor(canvas, cv2.COLOR_BGR2YUV_I420).tobytes()
    with out.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + i420)
    return out


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e .[dev])")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    camera = fake_camera(DATA / "enroll_examples" / "single" / "lin-manuel-miranda.png", tmp_path / "camera.y4m")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1280,900", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={camera}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_enrol_see_the_grant_live_and_erase_in_the_page(browser, mosquitto_broker, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("FACEGATE_SCREENSHOTS") or tmp_path / "screens")
    shots.mkdir(parents=True, exist_ok=True)
    # the page re-renders its tables as data arrives: an element found a moment ago may be replaced; look again
    wait = WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))

    def click(locator: tuple[str, str]) -> None:
        wait.until(lambda d: d.find_element(*locator).click() is None)  # a stale element is looked up again
    sub = Subscriber(mosquitto_broker, f"{PREFIX}/#").start()
    daemon = Daemon(tmp_path, site_config(tmp_path, mosquitto_broker))
    console = ConsoleProcess(daemon.config)
    token = console.token("ada", "admin")
    daemon.start()
    try:
        assert daemon.wait_record("ready", 120), daemon.tail()
        console.start()
        browser.get(console.url + "/")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.save_screenshot(str(shots / "01-sign-in.png"))
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "ada (admin)"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "daemon"), "daemon: up"))

        # follow the decisions live first: the grant comes within a second of the enrolment, and with one grant per
        # passage there is no second one to wait for; the stream stays open while the people tab is shown
        click((By.CSS_SELECTOR, "#tabs button[data-tab=decisions]"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live: on"))
        before = len(browser.find_elements(By.CSS_SELECTOR, "#decisions tbody tr.new"))
        click((By.CSS_SELECTOR, "#tabs button[data-tab=people]"))

        # enrol: one photo from a file, one from the (fake) camera
        browser.find_element(By.ID, "enrol-name").send_keys(MIRANDA)
        browser.find_element(By.ID, "enrol-groups").send_keys("staff")
        photo = tmp_path / "lin-manuel-miranda.png"
        shutil.copy(DATA / "enroll_examples" / "single" / "lin-manuel-miranda.png", photo)
        browser.find_element(By.ID, "enrol-files").send_keys(str(photo))
        browser.find_element(By.ID, "camera-open").click()
        wait.until(lambda d: d.execute_script("return document.querySelector('#camera-video').videoWidth") > 0)
        browser.find_element(By.ID, "camera-shoot").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#captured img")))
        browser.find_element(By.ID, "camera-close").click()
        browser.find_element(By.ID, "enrol-submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "enrol-result"), "2 enrolled"))
        results = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#enrol-result li")]
        assert results[0].startswith("lin-manuel-miranda.png: enrolled") and \
            results[1].startswith("camera-1.jpg: enrolled"), results
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#people tbody"), MIRANDA))
        browser.save_screenshot(str(shots / "02-people-enrolled.png"))

        # the grant appears live
        click((By.CSS_SELECTOR, "#tabs button[data-tab=decisions]"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live: on"))
        grant_row = (By.XPATH, f"//table[@id='decisions']//tr[contains(@class,'new')][td/span[text()='grant']]"
                               f"[td[text()='{MIRANDA}']]")
        wait.until(ec.presence_of_element_located(grant_row))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#decisions tbody tr.new")) > before
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#decisions img.snap"))  # snapshot thumbnails
        browser.save_screenshot(str(shots / "03-decisions-live.png"))
        assert sub.wait_for(lambda s: any(e["type"] == "grant" and e["person_name"] == MIRANDA
                                          for e in s.events()), 30)

        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=system]").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#cameras tbody"), "reading"))
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#doors tbody"), "staff"))
        browser.save_screenshot(str(shots / "04-cameras-doors.png"))

        # erase him
        click((By.CSS_SELECTOR, "#tabs button[data-tab=people]"))
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#people button.remove")))
        click((By.CSS_SELECTOR, "#people button.remove"))
        wait.until(ec.alert_is_present())
        browser.switch_to.alert.accept()
        wait.until(ec.text_to_be_present_in_element((By.ID, "people-count"), "(0)"))
        browser.save_screenshot(str(shots / "05-people-erased.png"))
        assert daemon.wait_record("gallery_identity_removed", 30), daemon.tail()
        with console.client(token) as c:
            assert c.get("/api/identities").json()["identities"] == []
            actions = [a["action"] for a in c.get("/api/activity").json()["actions"]]
        assert actions == ["identity.remove", "identity.enrol"]
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        assert not [entry for entry in logs if entry.get("level") == "SEVERE" and "favicon" not in entry["message"]], \
            logs
    finally:
        console.stop()
        daemon.kill()
        sub.stop()
