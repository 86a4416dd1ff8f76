"""Typed, validated configuration loaded from YAML.

``config.yaml`` at the repository root is the default configuration with every key
commented. Validation is strict: an unknown key, a wrong type or an out-of-range value
fails with one message naming the key, the bad value and what is allowed. CLI flags
override config values through :func:`apply_overrides`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from soundwatch.control.config import ControlConfig
from soundwatch.dashboard.config import DashboardConfig
from soundwatch.edge.config import EdgeConfig, ServeConfig
from soundwatch.endpoints import check_endpoint
from soundwatch.errors import SoundwatchError
from soundwatch.events.config import EventsConfig
from soundwatch.heads.config import HeadsConfig
from soundwatch.metrics.config import MetricsConfig
from soundwatch.model_catalog import MODEL_NAMES
from soundwatch.models.parallel import MAX_PARALLEL
from soundwatch.mqtt.config import MqttConfig
from soundwatch.recorder.config import RecorderConfig
from soundwatch.scale.config import InferenceConfig
from soundwatch.security.config import SecurityConfig
from soundwatch.sinks.smoothing import SMOOTHING_METHODS
from soundwatch.stream import check_source_spec
from soundwatch.stream.spec import STREAM_ID, STREAM_ID_RULE
from soundwatch.validation import (
    StrictModel,
    check_hop_within_window,
    check_whole_frames,
    parse_section,
)


class SourceConfig(StrictModel):
    """One audio stream: where it comes from and how to open it."""

    id: str | None = Field(default=None, description="stream id; default derived from the spec")
    spec: str = Field(description="mic | mic:DEVICE | file:PATH | pcm:- | synthetic | auto")
    channels: int | None = Field(default=None, ge=1, le=64)
    samplerate: int | None = Field(default=None, ge=8000, le=384000)
    blocksize: int | None = Field(default=None, ge=16, le=65536)
    loop: bool = False

    @field_validator("id")
    @classmethod
    def _id_is_topic_safe(cls, value: str | None) -> str | None:
        if value is not None and not STREAM_ID.match(value):
            raise ValueError(STREAM_ID_RULE)
        return value

    @field_validator("spec")
    @classmethod
    def _spec_is_valid(cls, value: str) -> str:
        if value.strip() != "auto":
            try:
                check_source_spec(value)
            except SoundwatchError as error:
                raise ValueError(str(error)) from None
        return value


class ModelConfig(StrictModel):
    """Which tagger runs, where its weights come from and on what device."""

    name: Literal[MODEL_NAMES] = "mn04"  # type: ignore[valid-type]
    weights: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)
    backend: Literal["auto", "torch", "onnx"] = "auto"
    # Chunks each forward pass is split into, run at once (soundwatch.models.parallel).
    parallel: Literal["auto"] | int = "auto"

    @field_validator("parallel", mode="before")
    @classmethod
    def _parallel_is_auto_or_count(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().isdigit():  # from a command-line flag
            value = int(value)
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PARALLEL
        ):
            return value
        raise ValueError(
            "must be 'auto' (the usable CPU cores; 1 on CUDA and with the Ray engine) or a "
            f"whole number of chunks from 1 to {MAX_PARALLEL}"
        )


class WindowConfig(StrictModel):
    """Sliding analysis windows: a window of ``window`` seconds every ``hop`` seconds."""

    window: float = Field(default=3.0, ge=0.32, le=30.0)
    hop: float = Field(default=0.5, ge=0.01, le=30.0)

    @model_validator(mode="after")
    def _hop_within_window(self) -> WindowConfig:
        check_whole_frames(window=self.window, hop=self.hop)
        check_hop_within_window(self.window, self.hop)
        return self


class SmoothingConfig(StrictModel):
    """How tag probabilities are smoothed across a stream's windows (``smoothed`` field)."""

    method: Literal[SMOOTHING_METHODS] = "ema"  # type: ignore[valid-type]
    width: float = Field(default=1.0, gt=0.0, le=600.0)  # seconds: ema time constant, median span


class PublishConfig(StrictModel):
    """Where results go: ZeroMQ PUB endpoints and an optional JSON-lines sink."""

    endpoints: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5557"])
    high_water_mark: int = Field(default=1000, ge=1, le=1_000_000)
    jsonl: str | None = Field(default=None, description="'-' for stdout or a file path")
    top_k: int = Field(default=5, ge=1, le=527)
    status_interval: float = Field(default=5.0, ge=0.1, le=3600.0)
    wait_for_subscribers: int = Field(default=0, ge=0, le=10_000)
    wait_timeout: float = Field(default=10.0, ge=0.0, le=3600.0)
    smoothing: SmoothingConfig = Field(default_factory=lambda: SmoothingConfig())
    mel: Literal["auto", "on", "off"] = "auto"
    embeddings: Literal["auto", "on", "off"] = "auto"

    @field_validator("endpoints")
    @classmethod
    def _endpoints_are_zmq(cls, value: list[str]) -> list[str]:
        return [check_endpoint(endpoint) for endpoint in value]


class GateConfig(StrictModel):
    """Activity gating: windows with nothing new to hear since the stream's last tagged
    window skip the forward pass and carry its result (``soundwatch.dsp.activity``)."""

    enabled: bool = True  # event F1 on scenes-dev within 0.02 (docs/performance.md)
    level_db: float = Field(default=2.0, gt=0.0, le=60.0)
    spectrum_db: float = Field(default=1.0, gt=0.0, le=60.0)
    max_carry_s: float = Field(default=10.0, gt=0.0, le=3600.0)


class PipelineConfig(StrictModel):
    """How audio is paced and how far inference may fall behind before windows are dropped."""

    pace: Literal["realtime", "fast"] = "realtime"
    max_pending_windows: int = Field(default=32, ge=1, le=100_000)  # per stream
    max_pending_seconds: float = Field(default=2.0, gt=0.0, le=3600.0)  # per stream and series
    max_batch: int = Field(default=32, ge=1, le=1024)
    # Streams' windows fall due at different moments of the hop (soundwatch.dsp.windows),
    # not all at once: steadier batches, lower latency (docs/performance.md).
    stagger: bool = True
    gate: GateConfig = Field(default_factory=GateConfig)


class Config(StrictModel):
    """The whole soundwatch configuration (the layout of ``config.yaml``)."""

    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(spec="auto")], min_length=1
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    edge: EdgeConfig = Field(default_factory=EdgeConfig)


def parse_config(data: Any, origin: str = "<config>") -> Config:
    """Validate a mapping (as loaded from YAML) into a :class:`Config`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SoundwatchError(
            f"invalid configuration in {origin}: the top level must be a mapping of sections "
            f"({', '.join(Config.model_fields)}), got {type(data).__name__}"
        )
    return parse_section(Config, data, origin)


def load_config(path: str | Path | None) -> Config:
    """Load and validate a YAML config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SoundwatchError(
            f"config file {path} does not exist; pass an existing file with --config"
        ) from None
    except OSError as error:
        raise SoundwatchError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SoundwatchError(f"config file {path} is not valid YAML{where}: {problem}") from None
    return parse_config(data, origin=str(path))


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``config`` with dotted keys (``"model.name"``) replaced and revalidated.

    ``None`` values mean "flag not given" and are ignored.
    """
    data = config.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    return parse_config(data, origin="command-line flags")


def model_and_window_overrides(
    model_name: str | None,
    weights: Path | None,
    device: str | None,
    backend: str | None,
    threads: int | None,
    window: float | None,
    hop: float | None,
) -> dict[str, Any]:
    """The config keys of the model and window flags that ``run``, ``tag``, ``learn`` and
    ``embed`` share (None: flag not given), for :func:`apply_overrides`."""
    return {
        "model.name": model_name,
        "model.weights": weights,
        "model.device": device,
        "model.backend": backend,
        "model.threads": threads,
        "windows.window": window,
        "windows.hop": hop,
    }
