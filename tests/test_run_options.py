"""``run_live`` options end to end with the real model: waiting for subscribers that do not
come, and the dashboard served from the pipeline process (``run --dashboard``), which also
switches the mel topic on by subscribing to it."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

import pytest

from soundwatch.config import Config, apply_overrides
from soundwatch.runner import Tagger, run_live


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    from conftest import shared_file

    weights = shared_file("models/mn04_as_mAP_432.pt")
    config = apply_overrides(Config(), {"model.weights": str(weights), "model.threads": 2})
    return Tagger.from_config(config)


def test_waiting_for_subscribers_that_never_come_starts_anyway_with_a_warning(
    tagger: Tagger, shared, caplog
) -> None:
    speech = shared("audio/clips/speech.wav")
    config = apply_overrides(
        Config(),
        {
            "sources": [{"id": "talk", "spec": f"file:{speech}"}],
            "pipeline.pace": "fast",
            "publish.endpoints": ["tcp://127.0.0.1:0"],
            "publish.wait_for_subscribers": 1,
            "publish.wait_timeout": 0.5,
        },
    )
    with caplog.at_level(logging.WARNING, logger="soundwatch"):
        pipeline = run_live(config, tagger=tagger, install_signal_handlers=False)
    assert "only 0 of 1 subscription(s) after 0 s; starting anyway" in caplog.text
    assert pipeline.streams[0].counters.windows_tagged == 15  # 10 s, 3 s windows every 0.5 s


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_the_dashboard_served_from_the_run_sees_tags_status_and_mel(tagger: Tagger) -> None:
    config = apply_overrides(
        Config(),
        {
            "sources": [{"id": "demo", "spec": "synthetic"}],
            "publish.endpoints": [],  # nothing outside: the dashboard reads in-process
            "dashboard.enabled": True,
            "dashboard.port": 0,
            "windows.window": 1.0,
            "windows.hop": 0.25,
        },
    )
    seen: dict = {}
    failures: list[BaseException] = []

    def watch(pipeline, endpoints: list[str], notes: list[str]) -> None:
        (note,) = notes
        url = note.removeprefix("dashboard on ")

        def poll() -> None:
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    snapshot = fetch_json(url + "api/snapshot")
                    views = {v["stream"]: v for v in snapshot["streams"]}
                    view = views.get("demo")
                    if view and view["top"] and view["status"] and view["mel"]:
                        seen.update(view)
                        break
                    time.sleep(0.2)
            except BaseException as error:  # reported by the test body
                failures.append(error)
            finally:
                pipeline.stop()

        seen["endpoints"] = endpoints
        threading.Thread(target=poll, daemon=True).start()

    run_live(config, tagger=tagger, on_ready=watch, install_signal_handlers=False)
    assert not failures, failures
    assert seen["endpoints"] == []
    assert seen["status"]["model"] == "mn04"
    assert seen["top"], "no smoothed top labels reached the dashboard"
    assert seen["mel"], "no spectrogram frames: the dashboard's mel. subscription did not count"
