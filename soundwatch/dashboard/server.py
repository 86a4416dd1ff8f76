"""The dashboard's web server: Starlette on uvicorn in a background thread.

Three parts, each on its own thread of control:

- the **relay** thread owns the ZeroMQ subscriber: it feeds each message to the
  :class:`~soundwatch.dashboard.state.DashboardState` and hands the JSON update to the
  event loop;
- the **hub**, on the event loop, gives every open page a bounded queue: a page that reads
  too slowly never holds up the others; when its queue is full its backlog is dropped
  (counted, shown on the page) and it gets a fresh snapshot instead;
- **uvicorn** serves the page, its scripts and styles (all from this package: no internet
  needed) and the WebSocket ``/ws``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
import zmq
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from soundwatch.client import CurveClient, Subscriber, subscribe_endpoints
from soundwatch.dashboard.config import check_token_needed
from soundwatch.dashboard.history import HistoryRoutes
from soundwatch.dashboard.state import DashboardState
from soundwatch.errors import SoundwatchError
from soundwatch.sinks.messages import Envelope

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOPICS = ["tags.", "status.", "events.", "mel."]  # "mel." switches the spectrogram on
CLIENT_QUEUE = 512  # updates queued per page before its backlog is dropped
STATS_INTERVAL = 1.0  # seconds between the dashboard's own counters sent to pages
START_TIMEOUT = 30.0  # seconds for the web server to come up
RESYNC = None  # queued in place of a dropped backlog: send the page a fresh snapshot


class Client:
    """One open page: its bounded queue of ``(revision, json)`` updates."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int | None, str] | None] = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = 0


class Hub:
    """The open pages. Used on the event loop only."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.dropped = 0  # updates dropped for slow pages, over all pages

    def add(self) -> Client:
        client = Client()
        self.clients.add(client)
        return client

    def remove(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, rev: int | None, text: str) -> None:
        """Queue an update for every page (``rev`` None: send whatever the page holds)."""
        for client in self.clients:
            try:
                client.queue.put_nowait((rev, text))
            except asyncio.QueueFull:  # a slow page: drop its backlog, resync it
                lost = client.queue.qsize() + 1
                while not client.queue.empty():
                    client.queue.get_nowait()
                client.queue.put_nowait(RESYNC)
                client.dropped += lost
                self.dropped += lost


class Relay(threading.Thread):
    """Receives messages, updates the state and passes each update to the event loop."""

    def __init__(
        self,
        subscriber: Subscriber,
        state: DashboardState,
        deliver: Callable[[int, str], None],
    ) -> None:
        super().__init__(name="dashboard-relay", daemon=True)
        self.subscriber = subscriber
        self.state = state
        self.deliver = deliver  # called with (revision, json text) on this thread
        self.stats: dict[str, Any] = {"received": 0, "malformed": 0, "missed": {}, "errors": 0}
        self.errors = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                message = self.subscriber.receive(timeout=0.2)
                self.stats = self._stats()  # before the update: counters never lag a page
                if message is not None:
                    self._relay(message)
        finally:
            self.subscriber.close()

    def _relay(self, message: Envelope) -> None:
        try:
            rev, update = self.state.apply(message)
        except Exception:  # a bug shown in the log and counted, not a frozen page
            self.errors += 1
            log.exception("dashboard: cannot show the %s message", message.topic)
            return
        if update["type"] != "ignored":
            self.deliver(rev, json.dumps(update, separators=(",", ":")))

    def _stats(self) -> dict[str, Any]:
        missed: dict[str, int] = {}
        for topic, count in self.subscriber.missed.items():
            stream = topic.partition(".")[2]
            missed[stream] = missed.get(stream, 0) + count
        return {
            "received": self.subscriber.received,
            "malformed": self.subscriber.malformed,
            "missed": missed,
            "errors": self.errors,
        }

    def stop(self) -> None:
        self._stop_event.set()


class LocalHostsOnly:
    """When bound to loopback, answer only requests addressed to a loopback name.

    A web page elsewhere could otherwise reach the dashboard through a DNS name pointing at
    127.0.0.1 (DNS rebinding) or open its WebSocket from another origin, and read what the
    microphones hear.
    """

    def __init__(self, app: ASGIApp, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host", "")
            origin = headers.get("origin")
            refused = (self.loopback and not _is_loopback_name(_host_name(host))) or (
                origin is not None and origin != "null" and urlsplit(origin).netloc != host
            )
            if refused:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    response = PlainTextResponse("request from another site refused", 403)
                    await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


TOKEN_COOKIE = "soundwatch_token"
LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>soundwatch: token needed</title></head>
<body style="font-family:sans-serif;max-width:30em;margin:4em auto">
<h1>soundwatch</h1><p>This dashboard asks for its access token.</p>
<form method="get" action="/"><input name="token" type="password" autofocus size="40"
 aria-label="token"> <button>Open</button></form>
<p>{reason}</p></body></html>"""


class TokenGate:
    """With a token, every request needs it: ``?token=...`` in the address (then a cookie
    keeps it, so the WebSocket and later visits carry it), the cookie, or an
    ``Authorization: Bearer`` header. Without it, the page asks for the token and the
    WebSocket is refused (close code 1008)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.cookie = _token_digest(token) if token is not None else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request = Request(scope) if scope["type"] == "http" else WebSocket(scope, receive, send)
        given = request.query_params.get("token")
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        from_url = given is not None and hmac.compare_digest(given, self.token)
        allowed = (
            from_url
            or hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), self.cookie)
            or (bool(bearer) and hmac.compare_digest(bearer, self.token))
        )
        if allowed:
            if from_url and scope["type"] == "http":
                send = self._with_cookie(send)
            await self.app(scope, receive, send)
            return
        log.warning("dashboard: refused a request for %s without the token", scope["path"])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] == "/":
            reason = "Wrong token." if given is not None else ""
            response: Response = HTMLResponse(LOGIN_PAGE.format(reason=reason), 401)
        else:
            response = PlainTextResponse("the dashboard token is needed", 401)
        await response(scope, receive, send)

    def _with_cookie(self, send: Send) -> Send:
        cookie = f"{TOKEN_COOKIE}={self.cookie}; Path=/; HttpOnly; SameSite=Strict"

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        return sending


def _token_digest(token: str) -> str:
    """What the cookie holds: a digest, so the token itself is not stored in the browser."""
    return hmac.new(token.encode(), b"soundwatch-dashboard", hashlib.sha256).hexdigest()


def connectable(endpoint: str) -> str:
    """A bound endpoint as a subscriber connects to it: ``tcp://*:5557`` and
    ``tcp://0.0.0.0:5557`` (all interfaces) are reached on the loopback address."""
    for wildcard, loopback in (
        ("tcp://*:", "tcp://127.0.0.1:"),
        ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
        ("tcp://[::]:", "tcp://[::1]:"),
    ):
        if endpoint.startswith(wildcard):
            return loopback + endpoint.removeprefix(wildcard)
    return endpoint


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """Subscribe to ``endpoints`` and serve the live dashboard on ``host:port``.

    ``start()`` returns once the page can be fetched; ``port=0`` picks a free port
    (``url`` tells which). ``close()`` stops the web server and the subscriber.
    """

    def __init__(
        self,
        endpoints: list[str],
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        curve: CurveClient | None = None,
        record: Path | None = None,
        control: str | None = None,
    ) -> None:
        if not endpoints:
            raise SoundwatchError("the dashboard needs at least one endpoint to subscribe to")
        try:
            check_token_needed(host, token)
        except ValueError as error:
            raise SoundwatchError(str(error)) from None
        self.token = token
        self.curve = curve
        self.record = record  # the record directory whose history and clips are served
        self.history = HistoryRoutes(record, control, curve)  # and the groups, through control
        self.endpoints = subscribe_endpoints([connectable(endpoint) for endpoint in endpoints])
        self.host = host
        self.port = port
        self.state = DashboardState()
        self.hub = Hub()
        self._relay: Relay | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        """The page's address (a loopback one when bound to all interfaces)."""
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> DashboardServer:
        """Bind, subscribe and serve; return once listening (errors raise SoundwatchError)."""
        sock = self._bind()
        try:
            subscriber = self._subscribe()
        except BaseException:
            sock.close()
            raise
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="dashboard-web", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or not self._thread.is_alive():
            subscriber.close()
            self.close()
            raise SoundwatchError(f"the dashboard web server did not start on {self.url}")
        self._relay = Relay(subscriber, self.state, self._deliver)
        self._relay.start()
        log.info("dashboard on %s, subscribed to %s", self.url, ", ".join(self.endpoints))
        return self

    def close(self) -> None:
        """Stop serving and unsubscribe (open pages see the connection close)."""
        if self._relay is not None:
            self._relay.stop()
            self._relay.join(timeout=5)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the web server stops (True) or ``timeout`` passes (False)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup ---------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM
            )[0]
        except socket.gaierror as error:
            raise SoundwatchError(
                f"cannot serve the dashboard on host {self.host!r}: {error.strerror}; "
                "check the host name (127.0.0.1 serves this machine only)"
            ) from None
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise SoundwatchError(
                f"cannot serve the dashboard on {self.host}:{self.port}: {error.strerror}; "
                "pick another port with --port (0 picks a free one)"
            ) from None
        self.port = sock.getsockname()[1]
        return sock

    def _subscribe(self) -> Subscriber:
        try:
            return Subscriber(self.endpoints, topics=TOPICS, curve=self.curve)
        except zmq.ZMQError as error:
            raise SoundwatchError(
                f"cannot subscribe to {', '.join(self.endpoints)}: {error.strerror}; expected "
                "tcp://HOST:PORT or ipc://PATH (what `soundwatch run` publishes on)"
            ) from None

    def _deliver(self, rev: int, text: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.hub.publish, rev, text)

    # -- the web app ---------------------------------------------------------------------

    def _app(self) -> ASGIApp:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            stats = asyncio.create_task(self._send_stats())
            self._ready.set()
            try:
                yield
            finally:
                stats.cancel()

        app = Starlette(
            routes=[
                Route("/", self._index),
                Route("/api/snapshot", self._snapshot_json),
                *self.history.routes(),
                WebSocketRoute("/ws", self._websocket),
                Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            ],
            lifespan=lifespan,
        )
        loopback = _is_loopback_name(self.host)
        return LocalHostsOnly(TokenGate(app, self.token), loopback)

    async def _index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _snapshot_json(self, request: Request) -> Response:
        return JSONResponse(self._snapshot()[1])

    def _snapshot(self) -> tuple[int, dict[str, Any]]:
        rev, snapshot = self.state.snapshot()
        snapshot["server"] = {
            "endpoints": self.endpoints,
            "history_s": self.state.history_s,
            **self._stats(),
        }
        return rev, snapshot

    def _stats(self) -> dict[str, Any]:
        relay = self._relay.stats if self._relay is not None else {}
        return {**relay, "clients": len(self.hub.clients), "dropped": self.hub.dropped}

    async def _send_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            text = json.dumps({"type": "stats", **self._stats()}, separators=(",", ":"))
            self.hub.publish(None, text)

    async def _websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        client = self.hub.add()
        try:
            writer = asyncio.create_task(self._write(websocket, client))
            reader = asyncio.create_task(self._read_until_closed(websocket))
            done, pending = await asyncio.wait({writer, reader}, return_when="FIRST_COMPLETED")
            for task in pending:
                task.cancel()
            for task in done:
                error = task.exception()
                if error is not None and not isinstance(error, WebSocketDisconnect | OSError):
                    raise error
        finally:
            self.hub.remove(client)

    async def _write(self, websocket: WebSocket, client: Client) -> None:
        shown = await self._send_snapshot(websocket)
        while True:
            item = await client.queue.get()
            if item is RESYNC:
                shown = await self._send_snapshot(websocket)
                continue
            rev, text = item
            if rev is None or rev > shown:  # older ones are in the snapshot already
                await websocket.send_text(text)

    async def _send_snapshot(self, websocket: WebSocket) -> int:
        rev, snapshot = self._snapshot()
        await websocket.send_text(json.dumps(snapshot, separators=(",", ":")))
        return rev

    @staticmethod
    async def _read_until_closed(websocket: WebSocket) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
