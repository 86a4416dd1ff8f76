"""The dashboard's history view in real Chromium, on a real ``soundwatch run --record DIR
--control E --dashboard 0``: events filtered by label, stream and time, a clip played in
the page with its spectrogram, and a group's threshold changed through the control endpoint
(a refused value changes nothing). Saves docs/images/history.png."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from browser import open_chromium, require_browser
from conftest import shared_file
from test_dashboard import CANVAS_STATS, Lines, soundwatch, stop
from test_mqtt import silence_bark_silence

from soundwatch.control.client import request
from soundwatch.dashboard.history import HistoryRoutes

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_clip_paths_outside_the_record_directory_are_not_served(tmp_path: Path) -> None:
    from soundwatch.dashboard.history import clip_path

    (tmp_path / "rec" / "clips").mkdir(parents=True)
    inside = tmp_path / "rec" / "clips" / "1-a-dog.flac"
    inside.write_bytes(b"fLaC")
    outside = tmp_path / "secret.flac"
    outside.write_bytes(b"fLaC")
    record = tmp_path / "rec"
    assert clip_path(record, str(inside)) == inside.resolve()
    assert clip_path(record, str(outside)) is None
    assert clip_path(record, str(record / "clips" / ".." / ".." / "secret.flac")) is None
    assert clip_path(record, str(record / "clips" / "missing.flac")) is None
    assert HistoryRoutes(None).row(1) is None


def test_history_view_in_chromium(tmp_path: Path) -> None:
    require_browser()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    weights = shared_file("models/mn04_as_mAP_432.pt")
    path, _ = silence_bark_silence(shared_file, tmp_path)
    control = f"ipc://{tmp_path / 'ctl'}"
    record = tmp_path / "rec"
    run = soundwatch(
        *("run", "--source", f"yard=file:{path}", "--loop", "--pace", "realtime"),
        *("--weights", str(weights), "--publish", f"ipc://{tmp_path / 'pub'}"),
        *("--record", str(record), "--control", control, "--dashboard", "0"),
    )
    driver = None
    try:
        url = Lines(run).wait_for(r"dashboard on (http://\S+?)[,;\s]", 120)[1]
        url = url.rstrip("/") + "/"
        driver = open_chromium(1680, 1300, "--autoplay-policy=no-user-gesture-required")
        driver.get(url)
        wait = WebDriverWait(driver, 120, ignored_exceptions=(StaleElementReferenceException,))
        show = (By.CSS_SELECTOR, "#history-filters button[type=submit]")

        def rows(d: Any) -> list[Any]:
            return d.find_elements(By.CSS_SELECTOR, "#history-rows tr")

        def shown(d: Any) -> bool:
            return d.find_element(By.ID, "history").get_attribute("data-busy") == "false"

        def refresh(d: Any) -> None:
            d.find_element(*show).click()
            WebDriverWait(d, 30).until(shown)

        def clip_rows(d: Any) -> list[Any]:
            refresh(d)  # the run keeps recording
            found = d.find_elements(By.CSS_SELECTOR, '#history-rows tr[data-label="dog"]')
            return [r for r in found if "play" in r.text]

        # The view is revealed by the page's first history fetch; the button is clickable after.
        wait.until(lambda d: d.find_element(*show).is_displayed(), "no history view shown")
        wait.until(clip_rows, "no dog event with a clip in the history view")

        # Filters: by label, by stream, by time (a window in the future holds nothing).
        form = driver.find_element(By.ID, "history-filters")
        labels = [o.text for o in Select(form.find_element(By.NAME, "label")).options]
        assert "dog" in labels
        Select(form.find_element(By.NAME, "label")).select_by_visible_text("dog")
        Select(form.find_element(By.NAME, "stream")).select_by_visible_text("yard")
        refresh(driver)

        def only_dogs(d: Any) -> bool:
            return bool(rows(d)) and all(r.get_attribute("data-label") == "dog" for r in rows(d))

        wait.until(only_dogs)
        assert {r.get_attribute("data-stream") for r in rows(driver)} == {"yard"}
        set_value = "arguments[0].value = arguments[1];"
        since = form.find_element(By.NAME, "since")
        driver.execute_script(set_value, since, "2999-01-01T00:00:00")
        refresh(driver)
        wait.until(lambda d: not rows(d), "a future time window still shows events")
        assert driver.find_element(By.ID, "history-count").text == "0 events"
        driver.execute_script(set_value, since, "")
        wait.until(clip_rows)

        # Play one: the clip plays in the page and its spectrogram is drawn.
        row = clip_rows(driver)[0]
        record_id = row.get_attribute("data-id")
        row.click()
        audio = driver.find_element(By.ID, "clip-audio")
        wait.until(
            lambda d: d.execute_script(
                "const a = arguments[0]; return a.readyState >= 2 && a.duration > 1;", audio
            ),
            "the clip did not load in the page",
        )
        assert audio.get_attribute("data-id") == record_id
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime", audio) > 0.2)
        wait.until(
            lambda d: (s := d.execute_script(CANVAS_STATS, "#clip-mel")) and s["colours"] > 30,
            "the clip's spectrogram was not drawn",
        )
        with urllib.request.urlopen(f"{url}api/clips/{record_id}/mel", timeout=30) as response:
            mel = json.loads(response.read())
        assert mel["bins"] == 128 and mel["frames"] > 100 and mel["seconds"] > 2

        # A group's fields change it through the control endpoint; a refused value does not.
        dog = '#group-rows tr[data-group="dog"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, dog), "no field for dog")
        field = driver.find_element(By.CSS_SELECTOR, f'{dog} input[name="threshold_on"]')
        result = driver.find_element(By.ID, "group-result")
        field.clear()
        field.send_keys("0.5")
        driver.find_element(By.CSS_SELECTOR, f"{dog} button").click()
        wait.until(lambda d: result.get_attribute("data-ok") == "true", "not applied")
        assert request(control, "get", group="dog")["threshold_on"] == pytest.approx(0.5)
        field = driver.find_element(By.CSS_SELECTOR, f'{dog} input[name="threshold_on"]')
        field.clear()
        field.send_keys("1.5")
        driver.find_element(By.CSS_SELECTOR, f"{dog} button").click()
        wait.until(lambda d: result.get_attribute("data-ok") == "false", "not refused")
        assert "less than or equal to 1" in result.text
        assert request(control, "get", group="dog")["threshold_on"] == pytest.approx(0.5)
        field = driver.find_element(By.CSS_SELECTOR, f'{dog} input[name="threshold_on"]')
        assert float(field.get_attribute("value")) == pytest.approx(0.5)

        history = driver.find_element(By.ID, "history")
        driver.execute_script("arguments[0].scrollIntoView()", history)
        screenshot = REPO_ROOT / "docs" / "images" / "history.png"
        assert history.screenshot(str(screenshot))
        assert screenshot.stat().st_size > 20_000
        refusal = (
            "/api/groups/dog - Failed to load resource: the server responded with a status of 400"
        )
        errors = [
            e
            for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and refusal not in e["message"]  # the refused 1.5
        ]
        assert not errors, f"the page logged errors: {errors}"
    finally:
        if driver is not None:
            driver.quit()
        stop(run)


@pytest.mark.parametrize("limit", ["-1", "0", "many"])
def test_a_history_limit_below_one_is_refused_not_read_as_unlimited(
    tmp_path: Path, limit: str
) -> None:
    """SQLite reads ``LIMIT -1`` as no limit: the row cap must hold whatever is asked."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "GET", "query_string": f"limit={limit}".encode()}
    response = HistoryRoutes(tmp_path).history(Request(scope))
    assert response.status_code == 400
    assert "limit must be a whole number from 1 to" in json.loads(response.body)["error"]
