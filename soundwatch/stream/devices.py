"""Input devices through PortAudio (sounddevice): listing, lookup, and PortAudio re-init.

sounddevice needs the PortAudio shared library; when it is missing, importing sounddevice
raises ``OSError``, which is turned into a ``SoundwatchError`` that names the system package.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import ModuleType

from soundwatch.errors import SoundwatchError

PORTAUDIO_HINT = (
    "the PortAudio library was not found; install the system package libportaudio2 "
    "(Debian/Ubuntu: apt-get install libportaudio2; Fedora: dnf install portaudio; "
    "macOS: brew install portaudio)"
)


def import_sounddevice() -> ModuleType:
    """Import sounddevice, explaining how to install PortAudio when it is missing."""
    try:
        import sounddevice
    except OSError as error:  # "PortAudio library not found"
        raise SoundwatchError(f"cannot use audio devices: {PORTAUDIO_HINT} ({error})") from None
    return sounddevice


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio input device."""

    index: int
    name: str
    channels: int
    default_rate: int
    hostapi: str
    is_default: bool


def list_input_devices() -> list[DeviceInfo]:
    """All devices that can record (``max_input_channels > 0``), in PortAudio's order."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_input = sd.default.device[0]
    except sd.PortAudioError as error:
        raise SoundwatchError(f"cannot list audio devices: {error}") from None
    if default_input is None or default_input < 0:
        try:
            default_input = sd.query_devices(kind="input")["index"]
        except (sd.PortAudioError, ValueError):
            default_input = -1
    result = []
    for device in devices:
        if device["max_input_channels"] <= 0:
            continue
        result.append(
            DeviceInfo(
                index=int(device["index"]),
                name=str(device["name"]),
                channels=int(device["max_input_channels"]),
                default_rate=round(device["default_samplerate"]),
                hostapi=str(hostapis[device["hostapi"]]["name"]),
                is_default=int(device["index"]) == default_input,
            )
        )
    return result


def format_devices(devices: list[DeviceInfo]) -> str:
    """One line per device, for error messages and ``soundwatch devices``."""
    if not devices:
        return "  (no input devices found)"
    lines = []
    for device in devices:
        mark = "*" if device.is_default else " "
        lines.append(
            f" {mark}{device.index:3d}  {device.name}  ({device.hostapi}, "
            f"{device.channels} ch, {device.default_rate} Hz)"
        )
    return "\n".join(lines)


def find_input_device(query: str | int | None) -> DeviceInfo:
    """The input device named by index, by part of its name (case-insensitive) or the default.

    An exact (case-insensitive) name match wins over partial matches; several partial matches
    are an error that lists them.
    """
    devices = list_input_devices()
    available = "available input devices:\n" + format_devices(devices)
    if query is None or (isinstance(query, str) and query.strip() == ""):
        for device in devices:
            if device.is_default:
                return device
        if devices:
            return devices[0]
        raise SoundwatchError("no audio input device found; " + available)
    if isinstance(query, int) or query.strip().isdigit():
        index = int(query)
        for device in devices:
            if device.index == index:
                return device
        raise SoundwatchError(f"no input device with index {index}; " + available)
    wanted = query.strip().lower()
    exact = [d for d in devices if d.name.lower() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise SoundwatchError(f"no input device matches {query!r}; " + available)
    raise SoundwatchError(
        f"{query!r} matches several input devices; use the index or a longer part of the "
        "name:\n" + format_devices(partial)
    )


class PortAudioStreams:
    """Counts open PortAudio streams so PortAudio is only re-initialised when none is open.

    PortAudio enumerates devices once, at initialisation; a device that appears later (a
    PulseAudio daemon that was restarted, a USB microphone plugged back in) is only seen after
    ``sd._terminate(); sd._initialize()``, which would break every other open stream.
    """

    _lock = threading.Lock()
    _open = 0

    @classmethod
    def opened(cls) -> None:
        with cls._lock:
            cls._open += 1

    @classmethod
    def closed(cls) -> None:
        with cls._lock:
            cls._open = max(0, cls._open - 1)

    @classmethod
    def reinitialize_if_idle(cls) -> bool:
        """Re-scan devices by restarting PortAudio, if no stream is open; True if done."""
        sd = import_sounddevice()
        with cls._lock:
            if cls._open:
                return False
            sd._terminate()
            sd._initialize()
            return True
