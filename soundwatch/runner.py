"""Assemble the pipeline from a :class:`~soundwatch.config.Config` and run it.

``run_live`` is what ``soundwatch run`` does; ``tag_file`` is what ``soundwatch tag`` does.
Both go through the same :class:`~soundwatch.pipeline.Pipeline` (frontend, windower,
batched inference), so a file tagged offline and the same file run live with
``--pace fast`` give the same probabilities.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from soundwatch.attached import AttachedSubscribers
from soundwatch.config import Config, load_config
from soundwatch.dsp import warmup as warmup_frontend
from soundwatch.dsp.activity import GateSettings
from soundwatch.dsp.windows import seconds_to_frames
from soundwatch.errors import SoundwatchError
from soundwatch.events import DetectorSettings, EventsConfig, EventsHandler, build_settings
from soundwatch.heads.live import HeadBank, HeadsHandler, RunBackbone
from soundwatch.metrics.inference import InferenceStats
from soundwatch.models import (
    ONTOLOGY_FILE,
    InferenceWorker,
    LoadedModel,
    load_model,
    resolve_bundle_file,
)
from soundwatch.models.parallel import ParallelInfer, resolve_parallel, session_threads
from soundwatch.pipeline import TAGS, Collector, Pipeline, WindowResult
from soundwatch.recorder.examples import LiveAudio
from soundwatch.recorder.recorder import Recorder

if TYPE_CHECKING:
    from soundwatch.control.server import ControlServer
    from soundwatch.scale.engine import RayEngine
from soundwatch.security.curve import CurveServer
from soundwatch.sinks.live import GroupTable, LivePublisher, LiveSettings
from soundwatch.sinks.mel import MelTap
from soundwatch.sinks.messages import Event
from soundwatch.sinks.publisher import JsonLinesOutput, Output, Publisher, ZmqOutput
from soundwatch.sources import (  # noqa: F401 (re-exported: run's source helpers)
    open_sources,
    resolve_source_spec,
    sources_from_args,
)
from soundwatch.stream import open_source, parse_source_spec

log = logging.getLogger(__name__)


@dataclass
class Tagger:
    """A loaded model and the worker that runs it: shared by every stream of a run. The
    worker is in this process, or with ``inference.engine: ray`` a Ray Serve deployment of
    the same model (:class:`~soundwatch.scale.engine.RayEngine`, docs/scale.md)."""

    loaded: LoadedModel
    worker: InferenceWorker | RayEngine

    @classmethod
    def from_config(cls, config: Config) -> Tagger:
        # a local worker reads the checkpoint only if it needs torch (not when a cached
        # ONNX export of it runs: the start then imports no torch, docs/performance.md)
        local = config.inference.engine != "ray"
        loaded = load_model(config.model.name, config.model.weights, lazy=local)
        if not local:
            from soundwatch.scale.engine import RayEngine  # imports Ray: only when chosen

            worker: InferenceWorker | RayEngine = RayEngine(
                loaded,
                config.inference,
                device=config.model.device,
                threads=config.model.threads,
                backend=config.model.backend,
            )
        else:
            worker = InferenceWorker(
                loaded,
                device=config.model.device,
                threads=session_threads(config.model.threads, config.model.parallel),
                backend=config.model.backend,
            )
        return cls(loaded, worker)

    def engine_counters(self) -> dict[str, float]:
        """The engine's own status counters (Ray: replicas running, retries, losses)."""
        return {} if isinstance(self.worker, InferenceWorker) else self.worker.counters()

    def close(self) -> None:
        """Release the engine (Ray: delete the deployment, stop a Ray started for it)."""
        if not isinstance(self.worker, InferenceWorker):
            self.worker.close()

    @property
    def labels(self) -> list[str]:
        return list(self.loaded.labels)

    def events_handler(
        self, config: EventsConfig, publish: Callable[[Event], None]
    ) -> EventsHandler | None:
        """An event detector per stream, or None when events are disabled."""
        if not config.enabled:
            return None
        return EventsHandler(self.events_settings(config), publish)

    def events_settings(self, config: EventsConfig) -> DetectorSettings:
        """The event groups of ``config`` resolved against this model's classes."""
        weights_dir = self.loaded.weights_path.parent
        return build_settings(
            config,
            self.loaded.labels,
            self.loaded.mids,
            find_ontology=lambda: resolve_bundle_file(ONTOLOGY_FILE, weights_dir),
        )

    def head_bank(self, config: Config, events: EventsHandler | None = None) -> HeadBank | None:
        """The configured heads, checked against this model and window (None: no heads).
        Their labels may not repeat an event group's name."""
        if not config.heads.paths:
            return None
        return HeadBank(
            config.heads.paths,
            RunBackbone(self.loaded.name, self.loaded.sha256, config.windows.window),
            reserved=events.settings.labels if events is not None else (),
            watch_s=config.heads.watch,
        )

    def heads_handler(
        self, config: Config, publish: Callable[[Event], None], events: EventsHandler | None
    ) -> HeadsHandler | None:
        """Heads applied to the tag windows of a live run, reloaded when their files change."""
        bank = self.head_bank(config, events)
        if bank is None:
            return None
        smoothing = config.publish.smoothing
        return HeadsHandler(
            bank, publish, config.events, config.windows.hop, smoothing.method, smoothing.width
        )


def gate_settings(config: Config) -> GateSettings | None:
    """The activity gate's settings when ``pipeline.gate.enabled``, else None."""
    gate = config.pipeline.gate
    if not gate.enabled:
        return None
    return GateSettings(gate.level_db, gate.spectrum_db, gate.max_carry_s)


def forward_chunks(config: Config, tagger: Tagger) -> int:
    """How many chunks each forward pass runs as (``model.parallel`` for this tagger's
    device and engine: the usable cores on the CPU, else 1)."""
    return resolve_parallel(
        config.model.parallel, device=tagger.worker.device.type, engine=config.inference.engine
    )


def events_window(config: EventsConfig) -> tuple[float, float] | None:
    return (config.window, config.hop) if config.enabled else None


def curve_server(config: Config) -> CurveServer | None:
    """The run's CURVE keys (``security:``) for the sockets it serves, or None."""
    security = config.security
    if security.curve_secret is None or security.curve_allow is None:
        return None
    return CurveServer(security.curve_secret, security.curve_allow)


def build_outputs(config: Config) -> list[Output]:
    outputs: list[Output] = []
    try:
        if config.publish.endpoints:
            outputs.append(
                ZmqOutput(
                    config.publish.endpoints,
                    config.publish.high_water_mark,
                    curve=curve_server(config),
                )
            )
        if config.publish.jsonl:
            outputs.append(JsonLinesOutput(config.publish.jsonl))
    except BaseException:
        for output in outputs:
            output.close()
        raise
    return outputs


def run_live(
    config: Config,
    tagger: Tagger | None = None,
    on_ready: Callable[[Pipeline, list[str], list[str]], None] | None = None,
    install_signal_handlers: bool = True,
    config_path: Path | None = None,
    feeder: Callable[[Pipeline], AbstractContextManager[object]] | None = None,
    local_sources: bool = True,
) -> Pipeline:
    """Run the live pipeline until SIGINT/SIGTERM or until every source has ended.

    ``on_ready(pipeline, endpoints, notes)`` is called once everything listens: the bound
    endpoints, and a line per attached subscriber (dashboard URL, MQTT broker). Returns
    the finished pipeline (its streams hold the final counters).

    ``feeder(pipeline)`` (``soundwatch serve``'s edge listener) is entered while the
    pipeline runs and adds streams fed from elsewhere (:meth:`Pipeline.add_stream`); the
    run then lasts until a signal, not until the sources end. ``local_sources=False``
    opens none of the config's sources.
    """
    own_tagger = tagger is None  # closed here (a Ray deployment is deleted)
    tagger = tagger or Tagger.from_config(config)
    warming = Warmup(config, tagger)  # runs on while the sources capture the first window
    outputs = build_outputs(config)
    attached = AttachedSubscribers(config)
    publisher = Publisher(outputs)
    mel_tap = MelTap()
    recorder: Recorder | None = None
    control: ControlServer | None = None
    parallel: ParallelInfer | None = None
    try:
        if attached.wanted:
            outputs.append(attached.bind())
            notes = attached.start()
        else:
            notes = []
        sources = open_sources(config) if local_sources else []
        if config.recorder.enabled:
            recorder = Recorder(
                config.recorder, tagger.labels, tagger.loaded.name, streams=[s.id for s in sources]
            )
        audio = _live_audio(config, recorder)
        chunks = forward_chunks(config, tagger)
        parallel = ParallelInfer(tagger.worker.infer, chunks)  # forward passes on every core
        # batch sizes and times of whole passes, for status
        inference = InferenceStats(parallel)
        pipeline = Pipeline(
            sources,
            inference.infer,
            [],
            window_s=config.windows.window,
            hop_s=config.windows.hop,
            max_pending_windows=config.pipeline.max_pending_windows,
            max_pending_seconds=config.pipeline.max_pending_seconds,
            max_window_age=config.pipeline.max_pending_seconds,  # latency budget past capacity
            gate=gate_settings(config),
            max_batch=config.pipeline.max_batch,
            stagger=config.pipeline.stagger,
            events_window=events_window(config.events),
            on_frames=mel_tap.on_frames if config.publish.mel != "off" else None,
            on_audio=recorder.on_audio if recorder is not None else audio and audio.on_audio,
            open_ended=feeder is not None,
        )
        events = tagger.events_handler(config.events, publisher.publish)
        if events is not None:
            pipeline.handlers.append(events)  # first: its last events precede the final status
        if recorder is not None:
            recorder.attach(events)  # events get their history id before they are published
            pipeline.handlers.append(recorder)
        heads = tagger.heads_handler(config, publisher.publish, events)
        if heads is not None:
            pipeline.handlers.append(heads)  # before the live publisher, which reads its fields
        live = LivePublisher(
            publisher,
            live_settings(config, tagger, events, chunks),
            pipeline.reports,
            extra_counters=_stage_counters(events, recorder, heads),
            mel_tap=mel_tap,
            heads=heads,
            inference=lambda: {
                **inference.snapshot(),
                **pipeline.fault_counters(),
                **tagger.engine_counters(),
            },
        )
        pipeline.handlers.append(live)
        control = _start_controls(
            config, config_path, tagger, events, pipeline, recorder, live, audio
        )
        if control is not None:
            notes.append(f"control on {control.endpoint} (soundwatch ctl --endpoint ...)")
            attached.attach_control(control.endpoint, control.local_client())
        zmq_outputs = [o for o in outputs if isinstance(o, ZmqOutput) and o is not attached.output]
        endpoints = [e for o in zmq_outputs for e in o.endpoints]
        with (
            _stop_on_signals(pipeline, install_signal_handlers),
            feeder(pipeline) if feeder is not None else nullcontext(),
        ):
            if on_ready is not None:
                on_ready(pipeline, endpoints, notes)
            _wait_for_subscribers(zmq_outputs, config)
            pipeline.run()
        warming.finish()
    finally:
        try:
            if control is not None:
                control.close()
            if recorder is not None:
                recorder.close()
            attached.close()
        finally:
            publisher.close()
            if parallel is not None:
                parallel.close()
            if own_tagger:
                tagger.close()
    return pipeline


class Warmup:
    """Start-up work that can run while the sources capture the first window, in a thread:
    the frontend's numba kernels (loaded from numba's on-disk cache, about 1 s, mostly
    numba's own first-use imports) and the model's first passes (at ``pipeline.max_batch``,
    so ONNX Runtime's arena is at its high-water mark before the first stream's batch).

    The first tags still wait for the first window's audio, which takes longer (3 s by
    default); done before the sources opened, this work added its time to the start-up
    (docs/performance.md, start-up). Numba's compiler lock is held while the kernels load
    and are checked against the frontend's tables, so a stream that pushes audio first
    waits for them (its audio waits in the source's ring) and never runs a stale kernel.
    """

    def __init__(self, config: Config, tagger: Tagger) -> None:
        self.config = config
        self.tagger = tagger
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="warmup", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from numba.core.compiler_lock import global_compiler_lock

        config = self.config
        try:
            with global_compiler_lock:
                warmup_frontend()
            frames = seconds_to_frames(config.windows.window)
            self.tagger.worker.warmup(frames, config.pipeline.max_batch)
            if config.events.enabled and config.events.window != config.windows.window:
                self.tagger.worker.warmup(seconds_to_frames(config.events.window))
        except BaseException as error:  # raised again by finish(), in the caller's thread
            log.exception("start-up warm-up failed")
            self.error = error

    def finish(self) -> None:
        """Wait for the warm-up; raise what failed in it."""
        self.thread.join()
        if self.error is not None:
            raise self.error


def _live_audio(config: Config, recorder: Recorder | None) -> LiveAudio | None:
    """The last seconds of each stream for ``soundwatch record`` (with ``--control``): the
    recorder's rings when it runs, else small rings of its own (recorder.example_seconds)."""
    if config.control.endpoint is None:
        return None
    if recorder is not None:
        return LiveAudio(config.recorder.ring_seconds, rings=recorder.rings)
    return LiveAudio(config.recorder.example_seconds)


def _start_controls(
    config: Config,
    config_path: Path | None,
    tagger: Tagger,
    events: EventsHandler | None,
    pipeline: Pipeline,
    recorder: Recorder | None,
    live: LivePublisher,
    audio: LiveAudio | None = None,
) -> ControlServer | None:
    """Runtime control (docs/control.md) when ``control.endpoint`` is set: changes are
    written to the history, shown in status and, with ``control.persist``, kept in the
    overlay file (applied here first)."""
    from soundwatch.control.controls import Controls, overlay_path
    from soundwatch.control.server import ControlServer

    if config.control.endpoint is None:
        return None

    def reload() -> DetectorSettings:
        if config_path is None:
            raise SoundwatchError("nothing to reload: soundwatch was started without --config")
        fresh = load_config(config_path)  # a bad file raises, naming the problem
        if not fresh.events.enabled:
            raise SoundwatchError("the reloaded config disables events; restart for that")
        return tagger.events_settings(fresh.events)

    def on_change(origin: str, command: str, detail: dict) -> None:
        if recorder is not None:
            recorder.record_change(origin, command, detail)
        groups = live.settings.groups
        if events is not None and groups is not None:  # status shows the new thresholds
            thresholds = [float(t) for t in events.settings.thresholds.on]
            live.settings = replace(live.settings, groups=replace(groups, thresholds=thresholds))

    overlay = overlay_path(config_path, config.control.overlay) if config.control.persist else None
    controls = Controls(events, pipeline.streams, reload, overlay, on_change, audio)
    if controls.apply_overlay():
        log.info("applied the runtime changes kept in %s", overlay)
        on_change("overlay", "start", {"overlay": str(overlay)})
    previous = live.extra_counters
    live.extra_counters = lambda stream: {
        **(previous(stream) if previous is not None else {}),
        **controls.counters(stream),
    }
    return ControlServer(config.control.endpoint, controls, curve=curve_server(config)).start()


def _stage_counters(
    events: EventsHandler | None, recorder: Recorder | None, heads: HeadsHandler | None = None
) -> Callable[[str], dict[str, int]] | None:
    """The event detectors', the recorder's and the heads' counters of a stream, for status."""
    stages = [stage.counters for stage in (events, recorder, heads) if stage is not None]
    if not stages:
        return None
    return lambda stream: {k: v for counters in stages for k, v in counters(stream).items()}


def live_settings(
    config: Config, tagger: Tagger, events: EventsHandler | None, chunks: int = 1
) -> LiveSettings:
    """What the live publisher says and how it smooths, from the config and the model;
    ``chunks``: forward passes split into that many concurrent chunks (status ``backend``
    ends `` xN``)."""
    groups = None
    if events is not None:
        settings = events.settings
        groups = GroupTable(
            names=settings.labels,
            table=settings.score_table,
            thresholds=[float(t) for t in settings.thresholds.on],
        )
    return LiveSettings(
        model_name=tagger.loaded.name,
        labels=tagger.labels,
        window_s=config.windows.window,
        hop_s=config.windows.hop,
        events_window=events_window(config.events),
        top_k=config.publish.top_k,
        status_interval=config.publish.status_interval,
        smoothing=config.publish.smoothing.method,
        smoothing_width=config.publish.smoothing.width,
        mel=config.publish.mel,
        embeddings=config.publish.embeddings,
        groups=groups,
        backend=f"{tagger.worker.backend}/{tagger.worker.device.type}"
        + (f" x{chunks}" if chunks > 1 else ""),
    )


def _wait_for_subscribers(outputs: list[ZmqOutput], config: Config) -> None:
    wanted = config.publish.wait_for_subscribers
    if not wanted or not outputs:
        return
    log.info("waiting up to %.0f s for %d subscription(s)", config.publish.wait_timeout, wanted)
    if not outputs[0].wait_for_subscribers(wanted, config.publish.wait_timeout):
        log.warning(
            "only %d of %d subscription(s) after %.0f s; starting anyway",
            outputs[0].subscriptions,
            wanted,
            config.publish.wait_timeout,
        )


class _stop_on_signals:
    """Within the block, SIGINT and SIGTERM ask the pipeline to finish cleanly."""

    def __init__(self, pipeline: Pipeline, enabled: bool) -> None:
        self.pipeline = pipeline
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: publishing the last windows and stopping", signal.strsignal(signum))
        self.pipeline.stop()

    def __enter__(self) -> None:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


@dataclass
class FileTags:
    """What ``soundwatch tag`` finds in one file: tag windows and (optionally) events."""

    windows: list[WindowResult]
    events: list[Event]  # start and end messages, Unix times
    origin: float  # Unix time of the file's first sample in those messages

    def finished_events(self) -> list[Event]:
        """The events as they ended (``state="end"``), in order of their end."""
        return [event for event in self.events if event.state == "end"]


def tag_file(
    path: str | Path,
    tagger: Tagger,
    window_s: float,
    hop_s: float,
    events: EventsConfig | None = None,
    heads: HeadBank | None = None,
    chunks: int = 1,
) -> FileTags:
    """Tag one audio file with sliding windows, as ``run --source file:PATH --pace fast``
    does; with ``events``, also the events the live pipeline would publish for it (those
    of the ``heads``' labels too). ``chunks``: forward passes split into that many
    concurrent chunks (:func:`forward_chunks`)."""
    spec = f"file:{path}"
    source = open_source(parse_source_spec(spec).default_id(), spec, pace="fast")
    collector = Collector()
    found: list[Event] = []
    handlers: list = [collector]
    if events is not None and (handler := tagger.events_handler(events, found.append)):
        handlers.append(handler)
    if heads is not None and events is not None:
        handlers.append(HeadsHandler(heads, found.append, events, hop_s, "none"))
    parallel = ParallelInfer(tagger.worker.infer, chunks)
    pipeline = Pipeline(
        [source],
        parallel,
        handlers,
        window_s=window_s,
        hop_s=hop_s,
        events_window=events_window(events) if events is not None else None,
    )
    try:
        pipeline.run()
    finally:
        parallel.close()
    windows = [r for r in collector.results if TAGS in r.purposes]
    origin = pipeline.streams[0].first_t
    return FileTags(windows, found, origin if origin is not None else 0.0)
