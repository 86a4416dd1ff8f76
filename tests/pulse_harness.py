"""A private PulseAudio daemon with a virtual microphone, for real PortAudio capture tests.

``PulseMicrophone`` starts ``pulseaudio`` (as the current user, root included) with its own
runtime directory, a UNIX socket and a ``module-pipe-source`` named ``swmic`` that reads
s16le mono PCM from a FIFO. A feeder thread writes into the FIFO at real-time pace: the
audio queued with ``feed()``, and silence when the queue is empty (a pipe source that gets
no data delivers none, which a recorder would see as a stalled device). PortAudio's ALSA
``pulse`` device (ALSA plugin from ``libasound2-plugins``) then records exactly what was
fed. ``PULSE_SERVER`` is set in ``os.environ`` while the harness runs, and PortAudio is
re-initialised so it enumerates the ``pulse`` device.

Usage in a test::

    from pulse_harness import PulseMicrophone

    with PulseMicrophone(rate=16000) as pulse:   # skips if PulseAudio is missing
        pulse.feed(tone)                         # float array in [-1, 1] or s16le bytes
        source = open_source("mic", f"mic:{pulse.device}")
        ...
        pulse.kill_daemon(); pulse.restart_daemon()   # device-loss tests

    subprocess.run([...], env=pulse.env)          # for a soundwatch subprocess

System packages: ``pulseaudio``, ``pulseaudio-utils`` (pactl), ``libportaudio2``,
``libasound2-plugins``. When one is missing, ``PulseMicrophone.require()`` skips the test
through ``conftest.unavailable``, or fails it under ``SOUNDWATCH_REQUIRE_SHARED=1`` (CI must
run these tests).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PulseUnavailable(RuntimeError):
    """PulseAudio (or PortAudio with its ALSA pulse plugin) is not installed."""


class PulseMicrophone:
    """A throwaway PulseAudio daemon whose default source plays what the test feeds."""

    SOURCE_NAME = "swmic"
    #: PortAudio device name to pass as ``mic:DEVICE``.
    device = "pulse"

    def __init__(self, rate: int = 16000, chunk_seconds: float = 0.01):
        self.rate = int(rate)
        self.chunk_frames = max(1, int(chunk_seconds * rate))
        self._tmp: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._partial = b""
        self._stop = threading.Event()
        self._feeder: threading.Thread | None = None
        self._old_env: dict[str, str | None] = {}
        self.fed_frames = 0  # frames of queued (non-silence) audio written so far
        self.written_frames = 0  # all frames written, silence included

    # ---------------------------------------------------------------- availability
    @staticmethod
    def missing() -> str | None:
        """Why the harness cannot run here, or None."""
        for tool in ("pulseaudio", "pactl"):
            if shutil.which(tool) is None:
                return f"{tool} not installed (apt-get install pulseaudio pulseaudio-utils)"
        try:
            import sounddevice  # noqa: F401
        except OSError as error:
            return f"PortAudio missing (apt-get install libportaudio2): {error}"
        plugin_dirs = list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so"))
        plugin_dirs += list(Path("/usr/lib/alsa-lib").glob("libasound_module_pcm_pulse.so"))
        if not plugin_dirs:
            return "ALSA pulse plugin missing (apt-get install libasound2-plugins)"
        return None

    @classmethod
    def require(cls) -> None:
        """Skip the calling test when the harness cannot run (fail it under CI)."""
        from conftest import unavailable

        reason = cls.missing()
        if reason is not None:
            unavailable(f"PulseAudio harness unavailable: {reason}")

    # ---------------------------------------------------------------- paths and env
    @property
    def runtime_dir(self) -> Path:
        assert self._tmp is not None, "harness not started"
        return self._tmp / "run"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "native"

    @property
    def fifo(self) -> Path:
        return self.runtime_dir / "swmic.fifo"

    @property
    def server(self) -> str:
        """The ``PULSE_SERVER`` value clients use."""
        return f"unix:{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should record from this daemon."""
        return dict(os.environ, PULSE_SERVER=self.server)

    def _daemon_env(self) -> dict[str, str]:
        assert self._tmp is not None
        return dict(
            os.environ,
            HOME=str(self._tmp / "home"),
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            PULSE_RUNTIME_PATH=str(self.runtime_dir),
            XDG_CONFIG_HOME=str(self._tmp / "home" / ".config"),
        )

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> PulseMicrophone:
        """Start the daemon and the feeder, point clients and PortAudio at it."""
        self.require()
        self._tmp = Path(tempfile.mkdtemp(prefix="soundwatch-pulse-"))
        (self._tmp / "home" / ".config").mkdir(parents=True)
        self.runtime_dir.mkdir(mode=0o700)
        self.start_daemon()
        for key in ("PULSE_SERVER",):
            self._old_env[key] = os.environ.get(key)
        os.environ["PULSE_SERVER"] = self.server
        self._reinitialize_portaudio()
        self._stop.clear()
        self._feeder = threading.Thread(target=self._feed_loop, name="pulse-feeder", daemon=True)
        self._feeder.start()
        return self

    def stop(self) -> None:
        """Stop feeder and daemon, restore the environment, remove the temporary files."""
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout=5)
            self._feeder = None
        self.kill_daemon(signal.SIGTERM)
        for key, value in self._old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._old_env.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> PulseMicrophone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_daemon(self, timeout: float = 10.0) -> None:
        """(Re)start the daemon and wait until it serves the pipe source as default."""
        for stale in (self.socket, self.fifo):  # left behind by a killed daemon
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        command = [
            "pulseaudio",
            "--daemonize=no",
            "--system=false",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--disable-shm=yes",
            "--use-pid-file=no",
            "-n",  # no default.pa: load only the modules below
            f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1",
            f"--load=module-pipe-source source_name={self.SOURCE_NAME} file={self.fifo} "
            f"format=s16le rate={self.rate} channels=1",
            "--load=module-null-sink sink_name=swnull",
            "--log-target=stderr",
        ]
        assert self._tmp is not None
        log = open(self._tmp / "pulseaudio.log", "ab")  # noqa: SIM115 (owned by the process)
        self._daemon = subprocess.Popen(
            command,
            env=self._daemon_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._daemon.poll() is not None:
                raise RuntimeError(f"pulseaudio exited at start-up:\n{self.log_tail()}")
            if self.socket.exists() and self.fifo.exists() and self._pactl("info", check=False):
                self._pactl("set-default-source", self.SOURCE_NAME)
                return
            time.sleep(0.05)
        raise RuntimeError(f"pulseaudio did not come up in {timeout} s:\n{self.log_tail()}")

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        """Kill the daemon (SIGKILL by default: a crash, as in a device-loss test)."""
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(sig)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()

    def restart_daemon(self) -> None:
        """Start the daemon again after ``kill_daemon``; the feeder reconnects by itself."""
        self.kill_daemon()
        self.start_daemon()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon's log, for failure messages."""
        if self._tmp is None or not (self._tmp / "pulseaudio.log").exists():
            return ""
        text = (self._tmp / "pulseaudio.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _pactl(self, *args: str, check: bool = True) -> bool:
        result = subprocess.run(
            ["pactl", *args],
            env=dict(self._daemon_env(), PULSE_SERVER=self.server),
            capture_output=True,
            timeout=10,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {result.stderr.decode()}")
        return result.returncode == 0

    @staticmethod
    def _reinitialize_portaudio() -> None:
        """Make PortAudio enumerate devices again (it lists ALSA's ``pulse`` only when a
        server answers, and only at initialisation)."""
        import sounddevice

        sounddevice._terminate()
        sounddevice._initialize()

    # ---------------------------------------------------------------- audio
    def feed(self, audio: np.ndarray | bytes) -> None:
        """Queue audio to play through the virtual microphone (after what is queued).

        ``audio``: float samples in [-1, 1] (mono, at ``self.rate``) or raw s16le bytes.
        """
        if isinstance(audio, np.ndarray):
            clipped = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 32767 / 32768)
            audio = (clipped * 32768).astype("<i2").tobytes()
        if len(audio) % 2:
            raise ValueError("s16le audio must have an even number of bytes")
        self._queue.put(bytes(audio))

    def wait_fed(self, timeout: float = 30.0) -> None:
        """Block until everything queued so far was written into the FIFO."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() or self._partial:
            if time.monotonic() > deadline:
                raise TimeoutError("the feeder did not drain its queue in time")
            time.sleep(0.01)

    def _next_chunk(self, nbytes: int) -> tuple[bytes, bool]:
        """The next ``nbytes`` of queued audio, padded with silence; and whether any was."""
        data = self._partial
        while len(data) < nbytes:
            try:
                data += self._queue.get_nowait()
            except queue.Empty:
                break
        chunk, self._partial = data[:nbytes], data[nbytes:]
        had_audio = bool(chunk)
        return chunk + b"\0" * (nbytes - len(chunk)), had_audio

    def _feed_loop(self) -> None:
        """Write into the FIFO at real-time pace; reopen it when the daemon restarts."""
        nbytes = self.chunk_frames * 2
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no daemon (reader) right now
                self._stop.wait(0.02)
                continue
            os.set_blocking(fd, True)
            t0 = time.monotonic()
            written = 0
            try:
                while not self._stop.is_set():
                    chunk, had_audio = self._next_chunk(nbytes)
                    os.write(fd, chunk)
                    written += self.chunk_frames
                    self.written_frames += self.chunk_frames
                    if had_audio:
                        self.fed_frames += self.chunk_frames
                    delay = t0 + written / self.rate - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
            except OSError:  # EPIPE: the daemon died; its FIFO is gone
                pass
            finally:
                os.close(fd)
