"""The live dashboard: its state, its server over real sockets, and the page in Chromium.

The browser test replays a real clip through ``soundwatch run`` (real model), serves the
page with ``soundwatch dashboard`` and drives Debian's Chromium with Selenium.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import open_chromium, require_browser
from conftest import REPO_ROOT, shared_file
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from soundwatch.dashboard.config import DashboardConfig, parse_listen_address
from soundwatch.dashboard.server import CLIENT_QUEUE, RESYNC, DashboardServer, Hub, connectable
from soundwatch.dashboard.state import EVENTS_KEPT, DashboardState
from soundwatch.errors import SoundwatchError
from soundwatch.sinks.messages import Event, Mel, Status, Tags
from soundwatch.sinks.publisher import Publisher, ZmqOutput
from soundwatch.validation import parse_section

LABELS = [f"label {i}" for i in range(527)]
LABELS[0], LABELS[74] = "Speech", "Dog"
DEADLINE = 30.0  # seconds any single condition may take on a busy 2-core machine


def status(stream: str = "hall", t_start: float = 1000.0, **fields: Any) -> Status:
    return Status(
        stream=stream,
        t_start=t_start,
        t_end=t_start + 1,
        model="mn04",
        labels=LABELS,
        window=3.0,
        hop=0.5,
        source={"kind": "file", "path": "/clips/hall.wav"},
        counters={"overflows": 0, "windows_dropped": 2},
        latency={"p50": 0.04, "p99": 0.09, "max": 0.1, "n": 20.0},
        groups={"dog": 0.4, "speech": 0.3},
        **fields,
    )


def tags(stream: str = "hall", t_end: float = 1003.0, dog: float = 0.8) -> Tags:
    probs = np.full(527, 0.001, np.float32)
    probs[74], probs[0] = dog, 0.3
    return Tags(
        stream=stream,
        t_start=t_end - 3,
        t_end=t_end,
        probs=probs,
        top=[("Dog", dog), ("Speech", 0.3)],
        groups={"dog": dog, "speech": 0.3, "siren": 0.001},
    )


def event(state: str, event_id: int = 0, onset: float = 1002.0, **fields: Any) -> Event:
    return Event(
        stream="hall",
        t_start=onset,
        t_end=onset,
        event_id=event_id,
        label="dog",
        state=state,
        onset=onset,
        peak=0.8,
        **fields,
    )


def mel(t_end: float, n: int = 20, stream: str = "hall") -> Mel:
    frames = np.arange(n * 64, dtype=np.uint32).reshape(n, 64).astype(np.uint8)
    return Mel(
        stream=stream,
        t_start=t_end - n / 100,
        t_end=t_end,
        frames=frames,
        bins=64,
        frame_rate=100.0,
        lo=-1.5,
        hi=3.0,
    )


# -- state -------------------------------------------------------------------------------


def test_state_keeps_the_recent_past_bounded() -> None:
    state = DashboardState(history_s=60.0, mel_seconds=2.0)
    state.apply(status())
    for i in range(400):  # 200 s of tags at a 0.5 s hop
        rev, update = state.apply(tags(t_end=1003.0 + i * 0.5, dog=0.8 if i % 2 == 0 else 0.1))
    assert update["type"] == "tags" and update["top"][0] == ["Dog", 0.1]
    column = update["column"]
    assert column["g"] == {"dog": 0.1, "speech": 0.3}, "groups far under any threshold left out"
    assert update["groups"] == {"dog": 0.1, "speech": 0.3, "siren": 0.001}
    assert column["l"] == {"Dog": 0.1, "Speech": 0.3}, "labels under the floor are left out"
    for i in range(50):
        state.apply(mel(t_end=1000.0 + i * 0.2))
    last_rev, snapshot = state.snapshot()
    assert last_rev == rev + 50
    (view,) = snapshot["streams"]
    times = [c["t"] for c in view["columns"]]
    assert times[-1] - times[0] <= 60.0 and len(times) == 121, "the timeline keeps 60 s"
    frames = sum(chunk["n"] for chunk in view["mel"])
    assert 200 <= frames < 220, "2 s of spectrogram at 100 frames/s, whole messages"
    assert view["status"]["counters"]["windows_dropped"] == 2
    assert view["status"]["groups"] == {"dog": 0.4, "speech": 0.3}
    assert view["status_age"] is not None and view["status_age"] < DEADLINE


def test_state_pairs_event_ends_with_their_starts_and_bounds_the_log() -> None:
    state = DashboardState()
    _, start = state.apply(event("start"))
    _, end = state.apply(event("end", offset=1005.5))
    assert start["event"]["key"] == end["event"]["key"] == 0
    assert end["event"]["state"] == "end" and end["event"]["offset"] == 1005.5
    (view,) = state.snapshot()[1]["streams"]
    assert [e["state"] for e in view["events"]] == ["end"], "one entry per event"
    _, orphan = state.apply(event("end", event_id=7, offset=1009.0))  # its start was missed
    assert orphan["event"]["key"] == 1
    for i in range(EVENTS_KEPT + 10):
        state.apply(event("start", event_id=100 + i, onset=1010.0 + i))
    (view,) = state.snapshot()[1]["streams"]
    assert len(view["events"]) == EVENTS_KEPT
    assert view["events"][-1]["id"] == 100 + EVENTS_KEPT + 9


def test_state_follows_a_restarted_pipeline() -> None:
    state = DashboardState()
    state.apply(status(seq=0))
    state.apply(status(seq=1, t_start=900.0))  # the same run (its first audio came later)
    state.apply(tags(t_end=1003.0))
    state.apply(event("start"))
    _, update = state.apply(status(seq=2))
    assert update["type"] == "status", "an open event stays open within a run"
    _, update = state.apply(status(seq=0))  # a new run: its seq counts from 0 again
    assert update["type"] == "stream"
    assert [e["state"] for e in update["view"]["events"]] == ["interrupted"]
    _, update = state.apply(tags(t_end=500.0))  # audio time went back: a new timeline
    assert update["type"] == "stream"
    assert [c["t"] for c in update["view"]["columns"]] == [500.0]
    _, update = state.apply(tags(stream="porch", t_end=10.0))  # a stream appearing later
    assert update["stream"] == "porch" and update["type"] == "tags"
    assert [v["stream"] for v in state.snapshot()[1]["streams"]] == ["hall", "porch"]


def test_a_slow_page_loses_its_backlog_not_the_others() -> None:
    hub = Hub()
    slow, fast = hub.add(), hub.add()
    for rev in range(CLIENT_QUEUE):
        hub.publish(rev, "{}")
        fast.queue.get_nowait()  # this page keeps up
    assert slow.queue.full() and hub.dropped == 0
    hub.publish(CLIENT_QUEUE, "{}")
    assert slow.dropped == CLIENT_QUEUE + 1 == hub.dropped
    assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is RESYNC, "it gets a snapshot"
    assert fast.queue.get_nowait() == (CLIENT_QUEUE, "{}") and fast.dropped == 0


# -- configuration -----------------------------------------------------------------------


def test_config_section_and_listen_address() -> None:
    config = DashboardConfig()
    assert (config.enabled, config.host, config.port) == (False, "127.0.0.1", 8080)
    assert parse_section(DashboardConfig, {"port": 0}, "x.yaml").port == 0
    with pytest.raises(SoundwatchError, match=r"dashboard\.port"):
        parse_section(DashboardConfig, {"port": 70000}, "x.yaml", ("dashboard",))
    with pytest.raises(SoundwatchError, match=r"dashboard\.bind: unknown key"):
        parse_section(DashboardConfig, {"bind": 1}, "x.yaml", ("dashboard",))
    assert parse_listen_address("8080") == ("127.0.0.1", 8080)
    assert parse_listen_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_listen_address("[::1]:0") == ("::1", 0)
    for bad in ("http", "host:", "1:2:99999", "-1"):
        with pytest.raises(SoundwatchError, match="expected \\[HOST:\\]PORT"):
            parse_listen_address(bad)


def test_dashboard_does_not_import_torch() -> None:
    code = (
        "import sys, soundwatch.cli, soundwatch.dashboard.server, soundwatch.dashboard.command; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr


# -- the server over real sockets ----------------------------------------------------------


def receive_until(
    ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The first message from the page socket that ``wanted`` accepts."""
    deadline = time.monotonic() + DEADLINE
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            break
        if wanted(message):
            return message
    pytest.fail(f"the dashboard never sent {what}")


def bind_publisher(endpoint: str) -> Publisher:
    """A publisher on ``endpoint``; retried while the previous one still holds the port."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return Publisher([ZmqOutput([endpoint])])
        except SoundwatchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # poll: the port frees once ZeroMQ's I/O thread closed it


def test_server_relays_messages_and_survives_a_restarted_pipeline() -> None:
    output = ZmqOutput(["tcp://127.0.0.1:0"])
    publisher = Publisher([output])
    endpoint = output.endpoints[0]
    server = DashboardServer([endpoint], port=0).start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
        ws_url = server.url.replace("http", "ws", 1) + "ws"
        with connect(ws_url, proxy=None) as ws:
            snapshot = receive_until(ws, lambda m: m["type"] == "snapshot", "a snapshot")
            assert snapshot["streams"] == [] and snapshot["server"]["endpoints"] == [endpoint]
            assert output.wait_for_subscribers(4, DEADLINE), "the dashboard did not subscribe"
            for message in (status(), tags(), event("start"), mel(1003.0)):
                publisher.publish(message)
            got = {
                kind: receive_until(ws, lambda m, k=kind: m["type"] == k, f"a {kind} update")
                for kind in ("status", "tags", "event", "mel")
            }
            assert got["tags"]["stream"] == "hall" and got["tags"]["top"][0] == ["Dog", 0.8]
            assert got["event"]["event"]["label"] == "dog"
            assert got["mel"]["chunk"]["n"] == 20 and got["status"]["status"]["model"] == "mn04"

            publisher.close()  # the pipeline stops ... and a new one starts on the same port
            publisher = bind_publisher(endpoint)
            assert publisher.outputs[0].wait_for_subscribers(4, DEADLINE), "no resubscription"
            publisher.publish(tags(stream="porch", t_end=2003.0))
            update = receive_until(ws, lambda m: m.get("stream") == "porch", "the new stream")
            assert update["type"] == "tags" and update["column"]["t"] == 2003.0
            stats = receive_until(ws, lambda m: m["type"] == "stats", "its counters")
            assert stats["received"] == 5 and stats["clients"] == 1 and stats["malformed"] == 0

        with connect(ws_url, proxy=None) as late:  # a page opened late sees the past at once
            snapshot = receive_until(late, lambda m: m["type"] == "snapshot", "a snapshot")
            streams = {view["stream"]: view for view in snapshot["streams"]}
            assert sorted(streams) == ["hall", "porch"]
            assert streams["hall"]["events"][0]["state"] == "start"
            assert streams["hall"]["mel"][0]["n"] == 20
        with urllib.request.urlopen(server.url + "api/snapshot", timeout=DEADLINE) as response:
            assert len(json.load(response)["streams"]) == 2
        with urllib.request.urlopen(server.url + "static/app.js", timeout=DEADLINE) as response:
            assert b"new WebSocket" in response.read()
    finally:
        server.close()
        publisher.close()


def test_server_refuses_pages_of_other_sites() -> None:
    with DashboardServer(["tcp://127.0.0.1:1"], port=0) as server:
        ws_url = server.url.replace("http", "ws", 1) + "ws"
        with pytest.raises(InvalidStatus):  # cross-site WebSocket
            connect(ws_url, origin="http://evil.example", proxy=None)
        request = urllib.request.Request(server.url, headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError, match="403"):  # DNS rebinding
            urllib.request.urlopen(request, timeout=DEADLINE)
        with connect(ws_url, origin=f"http://127.0.0.1:{server.port}", proxy=None) as same:
            assert receive_until(same, lambda m: m["type"] == "snapshot", "a snapshot")


def test_a_token_guards_the_page_the_api_and_the_websocket() -> None:
    token = "correct-horse-battery"
    with DashboardServer(["tcp://127.0.0.1:1"], port=0, token=token) as server:
        ws_url = server.url.replace("http", "ws", 1) + "ws"

        def get(path: str, **headers: str) -> tuple[int, str, Any]:
            request = urllib.request.Request(server.url + path, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                    return response.status, response.read().decode(), response.headers
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode(), error.headers

        code, body, _ = get("")
        assert code == 401 and 'name="token"' in body  # the page asks for it
        code, body, _ = get("?token=wrong-token-here")
        assert code == 401 and "Wrong token" in body
        for path in ("api/snapshot", "static/app.js"):
            assert get(path)[0] == 401
        with pytest.raises(InvalidStatus):
            connect(ws_url, proxy=None)
        with pytest.raises(InvalidStatus):
            connect(ws_url, proxy=None, additional_headers={"Cookie": "soundwatch_token=x"})

        code, body, headers = get(f"?token={token}")  # taken from the address
        assert code == 200 and "app.js" in body
        cookie = headers["Set-Cookie"].split(";")[0]
        assert token not in cookie and "HttpOnly" in headers["Set-Cookie"]
        assert get("api/snapshot", Cookie=cookie)[0] == 200
        assert get("api/snapshot", Authorization=f"Bearer {token}")[0] == 200
        with connect(ws_url, proxy=None, additional_headers={"Cookie": cookie}) as ws:
            assert receive_until(ws, lambda m: m["type"] == "snapshot", "a snapshot")


def test_beyond_loopback_a_token_is_required() -> None:
    with pytest.raises(SoundwatchError, match=r"reachable from other machines.*--token"):
        DashboardServer(["tcp://127.0.0.1:1"], host="0.0.0.0", port=0)
    with pytest.raises(SoundwatchError, match=r"reachable from other machines.*--token"):
        parse_section(DashboardConfig, {"enabled": True, "host": "0.0.0.0"}, "test")
    assert parse_section(
        DashboardConfig, {"enabled": True, "host": "0.0.0.0", "token": "long-enough"}, "t"
    ).token


def test_endpoints_bound_on_all_interfaces_are_reached_on_loopback() -> None:
    assert connectable("tcp://*:5557") == "tcp://127.0.0.1:5557"
    assert connectable("tcp://0.0.0.0:5557") == "tcp://127.0.0.1:5557"
    assert connectable("tcp://[::]:5557") == "tcp://[::1]:5557"
    assert connectable("ipc:///run/sw.sock") == "ipc:///run/sw.sock"
    assert DashboardServer(["tcp://*:6000"]).endpoints == ["tcp://127.0.0.1:6000"]


def test_busy_port_and_bad_endpoint_are_clear_errors() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SoundwatchError, match=f"127.0.0.1:{port}.*--port"):
            DashboardServer(["tcp://127.0.0.1:5557"], port=port).start()
        result = subprocess.run(
            [sys.executable, "-m", "soundwatch.cli", "dashboard", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
        assert result.returncode == 1
        assert result.stderr.startswith("soundwatch: error: cannot serve the dashboard")
        assert len(result.stderr.splitlines()) == 1
    with pytest.raises(
        SoundwatchError,
        match="cannot subscribe: 'nowhere' is not a ZeroMQ endpoint: it names no transport",
    ):
        DashboardServer(["nowhere"], port=0).start()


# -- the page in a real browser ------------------------------------------------------------


class Lines:
    """Lines of a child's stderr, read on a thread so waiting for one has a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._queue.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        pytest.fail(f"no line matching {pattern!r} in:\n{''.join(self.seen)}")


def soundwatch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "soundwatch.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# Pixel statistics of the spectrogram canvas: distinct colours (drawn, not blank) and a hash
# of every pixel (moving: it changes while audio plays).
CANVAS_STATS = """
const canvas = document.querySelector(arguments[0]);
if (!canvas || !canvas.width) return null;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let hash = 2166136261;
const colours = new Set();
for (let i = 0; i < data.length; i += 4) {
  const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
  hash = Math.imul(hash ^ rgb, 16777619) >>> 0;
  if (colours.size < 1000) colours.add(rgb);
}
return {hash: hash, colours: colours.size, url: canvas.toDataURL().length};
"""


def test_dashboard_in_chromium_shows_a_live_pipeline() -> None:
    require_browser()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    weights = shared_file("models/mn04_as_mAP_432.pt")
    speech = shared_file("audio/clips/speech.wav")  # 10 s of speech
    dog = shared_file("audio/esc50-dev/audio/4-184575-A-0.wav")  # 5 s of barking
    run = soundwatch(  # two streams, both looped
        "run",
        "--source",
        f"speech=file:{speech}",
        "--source",
        f"dog=file:{dog}",
        "--loop",
        "--pace",
        "realtime",
        "--publish",
        "tcp://127.0.0.1:0",
        "--wait-for-subscribers",
        "4",  # the dashboard's four topic prefixes: it sees the clip from its start
        "--weights",
        str(weights),
    )
    processes = [run]
    driver = None
    try:
        endpoint = Lines(run).wait_for(r"publishing on (tcp://[^\s,;]+)", 120)[1]
        dashboard = soundwatch("dashboard", "--endpoint", endpoint, "--port", "0")
        processes.append(dashboard)
        url = Lines(dashboard).wait_for(r"dashboard on (http://\S+)", 60)[1]

        driver = open_chromium(1680, 1220)
        driver.get(url)
        # The page re-renders as messages arrive: an element found a moment ago may be gone.
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
        card = '.card[data-stream="speech"]'

        def top_label(d: Any) -> str | None:
            items = d.find_elements(By.CSS_SELECTOR, f"{card} .top-list li")
            return items[0].get_attribute("data-label") if items else None

        wait.until(lambda d: top_label(d) == "Speech", "the bars never showed Speech on top")
        wait.until(
            lambda d: d.find_elements(
                By.CSS_SELECTOR, f'{card} .event-list li[data-label="speech"]'
            ),
            "the event log never showed a speech event",
        )
        spectrogram = f"{card} canvas.spectrogram"
        first = wait.until(
            lambda d: (
                (s := d.execute_script(CANVAS_STATS, spectrogram)) and s["colours"] > 30 and s
            ),
            "the spectrogram was never drawn",
        )
        wait.until(
            lambda d: d.execute_script(CANVAS_STATS, spectrogram)["hash"] != first["hash"],
            "the spectrogram does not move",
        )
        dog_event = '.card[data-stream="dog"] .event-list li[data-label="dog"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, dog_event), "no dog event")

        # Several streams: all shown, or one picked in the stream selector.
        def shown(d: Any) -> list[str]:
            cards = d.find_elements(By.CSS_SELECTOR, ".card")
            return sorted(c.get_attribute("data-stream") for c in cards if c.is_displayed())

        assert shown(driver) == ["dog", "speech"]
        picker = driver.find_element(By.ID, "picker")
        picker.find_element(By.XPATH, ".//button[text()='dog']").click()
        assert shown(driver) == ["dog"]
        picker.find_element(By.XPATH, ".//button[text()='All']").click()
        assert shown(driver) == ["dog", "speech"]

        badge = driver.find_element(By.CSS_SELECTOR, f"{card} .badge")
        assert badge.text.lower() == "live"
        wait.until(
            lambda d: d.find_element(
                By.CSS_SELECTOR, f'{card} [data-health="latency"]'
            ).text.endswith(" ms"),
            "no latency in the health panel",
        )
        assert driver.find_element(By.CSS_SELECTOR, f'{card} [data-health="model"]').text == "mn04"
        assert driver.find_element(By.ID, "connection").get_attribute("data-state") == "open"
        # Served by soundwatch alone: every resource the page loaded came from its origin.
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert any(name.endswith("/static/app.js") for name in loaded)
        assert all(name.startswith(url.rstrip("/")) for name in loaded), loaded

        Select(driver.find_element(By.ID, "span")).select_by_value("60")
        tagged = f'{card} [data-health="tagged"]'  # a fuller picture for the README: 20 s
        wait.until(lambda d: int("0" + d.find_element(By.CSS_SELECTOR, tagged).text) >= 35)
        screenshot = REPO_ROOT / "docs" / "images" / "dashboard.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(screenshot))
        assert Path(screenshot).stat().st_size > 20_000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"the page logged errors: {errors}"

        # The dashboard stops with the page open (Ctrl-C), and a new one on the same port
        # takes over: the page reconnects by itself and shows the streams again.
        assert stop(dashboard) == 0, "the dashboard did not stop cleanly on Ctrl-C"
        connection = (By.ID, "connection")
        wait.until(lambda d: d.find_element(*connection).get_attribute("data-state") == "closed")
        port = url.rstrip("/").rpartition(":")[2]
        dashboard = soundwatch("dashboard", "--endpoint", endpoint, "--port", port)
        processes.append(dashboard)
        Lines(dashboard).wait_for(r"dashboard on", 60)
        wait.until(lambda d: d.find_element(*connection).get_attribute("data-state") == "open")
        wait.until(lambda d: top_label(d) == "Speech", "the page did not come back")
    finally:
        if driver is not None:
            driver.quit()
        for process in reversed(processes):
            stop(process)
