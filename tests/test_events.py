"""Events: scoring rules, group resolution, config validation, streaming == offline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.scoring import Collars, LabelledEvent, match, score_events
from soundwatch.errors import SoundwatchError
from soundwatch.events import (
    EventDetector,
    EventsConfig,
    EventsHandler,
    detect_events_offline,
    detected_from_messages,
    parse_events_config,
    resolve_groups,
)
from soundwatch.events.agreement import StepAggregator, aggregate_steps, step_score
from soundwatch.events.config import GroupConfig, load_preset
from soundwatch.events.detector import DetectorSettings
from soundwatch.events.groups import Group, group_scores
from soundwatch.events.hysteresis import HysteresisTracker, Thresholds, find_spans
from soundwatch.events.smoothing import Smoother, smooth
from soundwatch.results import EVENTS, TAGS, WindowResult
from soundwatch.sinks.messages import decode, encode

# --- scoring ------------------------------------------------------------------------------


def ev(label: str, onset: float, offset: float) -> LabelledEvent:
    return LabelledEvent(label, onset, offset)


def test_match_needs_onset_within_1s_and_offset_within_collar():
    truth = [ev("dog", 10.0, 12.0)]
    assert score_events(truth, [ev("dog", 10.9, 12.9)]).micro.tp == 1
    assert score_events(truth, [ev("dog", 11.1, 12.0)]).micro.tp == 0  # onset 1.1 s late
    assert score_events(truth, [ev("dog", 10.0, 13.1)]).micro.tp == 0  # offset 1.1 s late
    assert score_events(truth, [ev("cat", 10.0, 12.0)]).micro.tp == 0  # other label
    onset_only = score_events(truth, [ev("dog", 10.0, 13.1)], Collars(onset_only=True))
    assert onset_only.micro.tp == 1


def test_offset_collar_grows_to_20_percent_of_long_events():
    truth = [ev("train", 0.0, 20.0)]  # 20 % of 20 s = 4 s
    assert score_events(truth, [ev("train", 0.5, 16.1)]).micro.tp == 1
    assert score_events(truth, [ev("train", 0.5, 15.9)]).micro.tp == 0


def test_matching_is_maximal_not_greedy():
    # The nearest-onset choice for the first true event would steal the only detection
    # the second one can use; a maximum matching pairs both.
    truth = [ev("dog", 0.0, 1.0), ev("dog", 1.0, 2.0)]
    detected = [ev("dog", 0.5, 1.5), ev("dog", -0.9, 0.5)]
    assert sorted(match(truth, detected, Collars())) == [(0, 1), (1, 0)]
    score = score_events(truth, detected)
    assert (score.micro.tp, score.micro.fp, score.micro.fn) == (2, 0, 0)


def test_micro_and_macro_averages():
    truth = [ev("dog", 0, 2), ev("dog", 5, 7), ev("cat", 10, 12)]
    detected = [ev("dog", 0, 2), ev("dog", 5, 7), ev("cow", 20, 22)]
    score = score_events(truth, detected)
    assert score.per_label["dog"].f1 == 1.0
    assert score.per_label["cat"].f1 == 0.0 and score.per_label["cow"].f1 == 0.0
    assert score.micro.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert score.macro_f1 == pytest.approx(1 / 3)
    assert score.micro.mean_onset_error == 0.0


def test_onset_error_is_mean_absolute_over_matches():
    truth = [ev("dog", 10, 12), ev("cat", 20, 22)]
    score = score_events(truth, [ev("dog", 10.5, 12), ev("cat", 19.7, 22)])
    assert score.micro.mean_onset_error == pytest.approx(0.4)


def test_scoring_rejects_reversed_events():
    with pytest.raises(SoundwatchError, match="ends before it starts"):
        score_events([ev("dog", 2, 1)], [])


# --- groups and config --------------------------------------------------------------------


@pytest.fixture
def audioset(shared):
    from soundwatch.labels import read_class_labels, read_ontology

    labels = read_class_labels(shared("models/class_labels_indices.csv"))
    ontology = read_ontology(shared("models/ontology.json"))
    return labels, ontology


def test_ontology_subtree_brings_the_children(audioset):
    labels, ontology = audioset
    spec = {"dog": GroupConfig(subtrees=["Dog"])}
    (group,) = resolve_groups(spec, labels.names, labels.mids, ontology)
    names = {labels.names[i] for i in group.indices}
    assert {"Dog", "Bark", "Howl", "Growling", "Whimper (dog)", "Bow-wow", "Yip"} <= names
    assert "Cat" not in names


def test_groups_by_label_name_or_mid(audioset):
    labels, _ = audioset
    spec = {"k": GroupConfig(labels=["typing", labels.mids[labels.names.index("Speech")]])}
    (group,) = resolve_groups(spec, labels.names, labels.mids)
    assert [labels.names[i] for i in group.indices] == ["Typing", "Speech"]


def test_unknown_label_names_the_closest(audioset):
    labels, ontology = audioset
    with pytest.raises(SoundwatchError, match=r"events.groups.pets: unknown label 'Dgo'"):
        resolve_groups({"pets": GroupConfig(labels=["Dgo"])}, labels.names, labels.mids)
    with pytest.raises(SoundwatchError, match="did you mean 'Dog'"):
        resolve_groups({"pets": GroupConfig(subtrees=["Dgo"])}, labels.names, labels.mids, ontology)


def test_subtrees_without_ontology_say_where_to_put_it(audioset):
    labels, _ = audioset
    with pytest.raises(SoundwatchError, match=r"ontology\.json"):
        resolve_groups({"dog": GroupConfig(subtrees=["Dog"])}, labels.names, labels.mids)


def test_no_groups_means_every_class(audioset):
    labels, _ = audioset
    groups = resolve_groups({}, labels.names, labels.mids)
    assert len(groups) == 527 and groups[0] == Group(labels.names[0], (0,))


def test_esc50_preset_has_50_groups_that_resolve(audioset):
    labels, _ = audioset
    preset = load_preset("esc50")
    assert len(preset) == 50
    groups = resolve_groups(preset, labels.names, labels.mids)
    by_name = {g.name: [labels.names[i] for i in g.indices] for g in groups}
    assert by_name["dog"][:2] == ["Dog", "Bark"]
    # The groups tuned on scenes are calibrated: one weight per class, in label order.
    calibrated = [g for g in groups if g.weights is not None]
    assert len(calibrated) >= 20
    for g in calibrated:
        assert len(g.weights) == len(g.indices) == len(preset[g.name].labels)


def test_duplicate_classes_in_a_calibrated_group_are_refused(audioset):
    labels, _ = audioset
    mid = labels.mids[labels.names.index("Dog")]
    spec = {"dog": GroupConfig(labels=["Dog", mid], weights=[1.0, 1.0], bias=0.0)}
    with pytest.raises(SoundwatchError, match="listed twice"):
        resolve_groups(spec, labels.names, labels.mids)


def test_group_scores_take_the_max_of_their_classes():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.0]], dtype=np.float32)
    scores = group_scores(probs, [Group("a", (0, 2)), Group("b", (1,))])
    np.testing.assert_array_equal(scores, np.float32([[0.2, 0.7], [0.5, 0.1]]))


def test_calibrated_group_scores_are_the_logistic_of_weighted_logits():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.0]], dtype=np.float32)
    groups = [Group("a", (0, 2), weights=(2.0, -1.0), bias=0.5), Group("b", (1,))]

    def logit(p: float) -> float:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return float(np.log(p / (1 - p)))

    expected = [
        [1 / (1 + np.exp(-(0.5 + 2 * logit(p[0]) - logit(p[2])))), p[1]] for p in probs.tolist()
    ]
    scores = group_scores(probs, groups)
    np.testing.assert_allclose(scores, np.float32(expected), rtol=1e-6)
    # A silent class (probability 0) gives a finite score, not nan.
    assert np.isfinite(scores).all() and scores[1, 0] > 0.99


def test_calibrated_score_with_max_weight_by_hand():
    # Two classes: z = bias + 1.0 x logit(p0) + 0.5 x logit(p2) + 2.0 x max(logits).
    probs = np.array([[0.1, 0.9, 0.8], [0.6, 0.3, 0.2]], dtype=np.float32)
    groups = [Group("a", (0, 2), weights=(1.0, 0.5), bias=-0.2, max_weight=2.0)]
    # Row 0: logit(0.1) = -2.1972, logit(0.8) = 1.3863, max 1.3863:
    #   z = -0.2 - 2.1972 + 0.6931 + 2.7726 = 1.0685, sigmoid = 0.7443.
    # Row 1: logit(0.6) = 0.4055, logit(0.2) = -1.3863, max 0.4055:
    #   z = -0.2 + 0.4055 - 0.6931 + 0.8109 = 0.3232, sigmoid = 0.5801.
    np.testing.assert_allclose(group_scores(probs, groups)[:, 0], [0.7443, 0.5801], atol=2e-4)
    # Without max_weight the same group is the plain weighted logistic.
    plain = [Group("a", (0, 2), weights=(1.0, 0.5), bias=-0.2)]
    np.testing.assert_allclose(group_scores(probs, plain)[:, 0], [0.1539, 0.3804], atol=2e-4)


def test_a_group_max_weight_reaches_the_score(audioset):
    labels, _ = audioset
    spec = {
        "dog": GroupConfig(labels=["Dog", "Bark"], weights=[0.0, 0.0], bias=0.0, max_weight=1.0)
    }
    (group,) = resolve_groups(spec, labels.names, labels.mids)
    assert group.max_weight == 1.0
    probs = np.full((1, len(labels.names)), 0.01, dtype=np.float32)
    probs[0, labels.names.index("Bark")] = 0.7
    # score = sigmoid(max logit) = the highest probability of the group's classes
    np.testing.assert_allclose(group_scores(probs, [group]), [[0.7]], rtol=1e-5)


def test_pooled_calibration_folds_into_the_runtime_score():
    """The benchmark's pooled logistic (features of a group's logits and its background
    level) folded into (weights, bias, max_weight) scores exactly as the unfolded one."""
    from benchmarks.events import fold_pooled, pooled_features
    from soundwatch.events.groups import logit

    rng = np.random.default_rng(3)
    probs = rng.uniform(0.001, 0.999, size=(40, 3)).astype(np.float32)
    level = (1.5, -2.0, 0.7)
    u, constant = rng.normal(size=5), 0.4
    direct = 1 / (1 + np.exp(-(pooled_features(logit(probs), level) @ u + constant)))
    weights, bias, max_weight = fold_pooled(u, constant, level, 3)
    group = Group("g", (0, 1, 2), tuple(weights), bias, max_weight)
    np.testing.assert_allclose(group_scores(probs, [group])[:, 0], direct, rtol=1e-5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tresholds": 1}, r"events\.tresholds: unknown key"),
        ({"threshold_on": 0.2, "threshold_off": 0.3}, "hysteresis needs off <= on"),
        ({"groups": {"dog": {}}}, "at least one entry in labels or subtrees"),
        ({"groups": {"dog": {"labels": ["Dog"], "colour": 1}}}, "unknown key"),
        ({"hop": 4.0}, "longer than window"),
        ({"agreement": 0}, "greater than 0"),
        ({"smoothing": {"method": "gauss"}}, "events.smoothing.method"),
        ({"preset": "urbansound"}, "events.preset"),
        (
            {"groups": {"dog": {"labels": ["Dog"], "weights": [1.0]}}},
            "weights and bias go together",
        ),
        (
            {"groups": {"dog": {"labels": ["Dog", "Bark"], "weights": [1.0], "bias": 0}}},
            "one weight per label",
        ),
        (
            {"groups": {"dog": {"subtrees": ["Dog"], "weights": [], "bias": 0}}},
            "not subtrees",
        ),
        (
            {"groups": {"dog": {"labels": ["Dog"], "weights": [float("nan")], "bias": 0}}},
            r"events\.groups\.dog\.weights\[0\]: Input should be a finite number",
        ),
        (
            {"groups": {"dog": {"labels": ["Dog"], "max_weight": 1.0}}},
            "max_weight is part of a calibrated score",
        ),
        (
            {"groups": {"dog": {"labels": ["Dog"], "weights": [1], "bias": 0, "max_weight": "x"}}},
            r"events\.groups\.dog\.max_weight: Input should be a valid number",
        ),
        ("yes", r"events: Input should be a valid dictionary"),
    ],
)
def test_config_errors_name_the_key(data, message):
    with pytest.raises(SoundwatchError, match=message):
        parse_events_config(data, origin="test.yaml")


def test_config_groups_override_the_preset():
    config = parse_events_config(
        {"preset": "esc50", "groups": {"dog": {"labels": ["Bark"], "threshold_on": 0.5}}}
    )
    groups = config.all_groups()
    assert len(groups) == 50
    assert groups["dog"].labels == ["Bark"] and groups["dog"].threshold_on == 0.5


def test_group_thresholds_and_durations_resolve_per_group():
    config = EventsConfig(
        threshold_on=0.2,
        min_duration=0.5,
        groups={
            "a": GroupConfig(labels=["x"], threshold_on=0.4),
            "b": GroupConfig(labels=["y"], threshold_off=0.05, min_duration=1.0, max_gap=0.0),
            "c": GroupConfig(labels=["z"], min_duration=0.0),
        },
    )
    groups = [Group("a", (0,)), Group("b", (1,)), Group("c", (2,))]
    t = DetectorSettings.from_config(config, groups).thresholds
    np.testing.assert_allclose(t.on, [0.4, 0.2, 0.2])
    np.testing.assert_allclose(t.off, [0.12, 0.05, 0.06])  # off defaults to 0.3 x on
    assert list(t.min_steps) == [5, 10, 0] and list(t.max_gap_steps) == [10, 0, 10]
    defaults = DetectorSettings.from_config(EventsConfig(), groups[:1]).thresholds
    assert (defaults.on[0], defaults.off[0]) == (np.float32(0.1), np.float32(0.03))


# --- streaming == offline --------------------------------------------------------------------


def random_walk_probs(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """Scores that wander between silence and loud, so events start and end."""
    steps = rng.normal(0, 0.8, size=(n, classes)).cumsum(axis=0)
    return (1 / (1 + np.exp(-(steps - 2.0)))).astype(np.float32)


def windows_of(n_frames: int, window: int, hop: int) -> list[tuple[int, int, bool]]:
    """Window placement of ``MelWindower``: starts at multiples of hop, plus a final tail."""
    out = [(s, s + window, False) for s in range(0, n_frames - window + 1, hop)]
    last = out[-1][1] if out else 0
    if n_frames > last:
        out.append((max(0, n_frames - window), n_frames, True))
    else:
        out[-1] = (*out[-1][:2], True)
    return out


def results_for(stream, placement, probs, origin) -> list[WindowResult]:
    return [
        WindowResult(
            stream=stream,
            start_frame=a,
            stop_frame=b,
            t_start=origin + a / 100,
            t_end=origin + b / 100,
            offset_s=a / 100,
            probs=p,
            embedding=np.zeros(1, np.float32),
            t_ingest=0.0,
            final=final,
            purposes=frozenset({TAGS, EVENTS}),  # the pipeline's shared tags/events windows
        )
        for (a, b, final), p in zip(placement, probs, strict=True)
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    window=st.sampled_from([32, 100, 300]),
    hop_div=st.sampled_from([1, 3, 6, 10]),
    step=st.sampled_from([10, 20]),
    agreement=st.sampled_from([1.0, 0.8, 0.5, 0.25]),
    smoothing=st.sampled_from([("none", 0.5), ("median", 0.5), ("median", 0.9), ("ema", 0.3)]),
    min_duration=st.sampled_from([0.0, 0.3, 1.0]),
    max_gap=st.sampled_from([0.0, 0.5, 2.0]),
    trim=st.sampled_from([0.0, 0.3]),
    drop=st.sampled_from([0.0, 0.2]),
    lead=st.sampled_from([(None, 3.0), (0.5, 3.0), (0.7, 0.3), (0.5, 60.0)]),
)
def test_streaming_detector_equals_offline(
    seed, window, hop_div, step, agreement, smoothing, min_duration, max_gap, trim, drop, lead
):
    rng = np.random.default_rng(seed)
    hop = max(1, window // hop_div)
    n_frames = int(rng.integers(window // 2, 2500))
    placement = windows_of(n_frames, window, hop)
    keep = rng.random(len(placement)) >= drop  # windows lost to backpressure
    keep[-1] = True
    placement = [p for p, k in zip(placement, keep, strict=True) if k]
    classes = 4
    probs = random_walk_probs(rng, len(placement), classes)
    config = EventsConfig(
        window=window / 100,
        hop=hop / 100,
        step=step / 100,
        agreement=agreement,
        trim=trim,
        smoothing={"method": smoothing[0], "width": smoothing[1]},
        threshold_on=0.5,
        threshold_off=0.3,
        min_duration=min_duration,
        max_gap=max_gap,
        lead_in=lead[0],
        max_lead_in=lead[1],
        groups={"ab": GroupConfig(labels=["a", "b"], threshold_on=0.7)},
    )
    # "ab" pools by max, "cd" is calibrated (a logistic of its classes' logits and their max).
    groups = [
        Group("ab", (0, 1)),
        Group("cd", (2, 3), weights=(0.8, 0.4), bias=0.3, max_weight=0.5),
    ]
    s = DetectorSettings.from_config(config, groups)
    starts = np.array([a for a, _, _ in placement])
    stops = np.array([b for _, b, _ in placement])
    offline = detect_events_offline(starts, stops, probs, s)

    origin = 1_700_000_000.0
    detector = EventDetector(s, "kitchen")
    messages = []
    for result in results_for("kitchen", placement, probs, origin):
        messages.extend(detector.push(result))
    messages.extend(detector.finish())  # nothing left: the final window ended the segment
    streamed = detected_from_messages(messages, origin)

    assert [(e.event_id, e.label) for e in streamed] == [(e.event_id, e.label) for e in offline]
    for a, b in zip(streamed, offline, strict=True):
        assert a.onset == pytest.approx(b.onset, abs=1e-6)
        assert a.offset == pytest.approx(b.offset, abs=1e-6)
        assert a.peak == b.peak
    # Every event starts once, before it ends, and ends once.
    states = [(m.event_id, m.state) for m in messages]
    for e in offline:
        assert states.count((e.event_id, "start")) == 1
        assert states.count((e.event_id, "end")) == 1
        assert states.index((e.event_id, "start")) < states.index((e.event_id, "end"))
    assert all(m.offset is None for m in messages if m.state == "start")


def test_aggregator_streams_the_offline_quantiles():
    rng = np.random.default_rng(0)
    placement = windows_of(1000, 300, 50)
    scores = rng.random((len(placement), 3)).astype(np.float32)
    starts = np.array([a for a, _, _ in placement])
    stops = np.array([b for _, b, _ in placement])
    offline, uncovered = aggregate_steps(starts, stops, scores, 10, 0.2)
    aggregator = StepAggregator(10, 0.2, 3)
    streamed = []
    for (a, b, _), s in zip(placement, scores, strict=True):
        streamed.extend(aggregator.push(a, b, s))
    streamed.extend(aggregator.finish())
    assert [k for k, _ in streamed] == list(range(100)) and uncovered == 0
    np.testing.assert_array_equal(np.stack([v for _, v in streamed]), offline)
    # Step 0 is covered by one window only; step 50 by six (starts 250..500).
    np.testing.assert_array_equal(offline[0], scores[0])
    np.testing.assert_allclose(offline[50], np.quantile(scores[5:11], 0.2, axis=0), rtol=1e-6)


def test_tracker_run_of_equal_steps_equals_step_by_step():
    # push_run computes a run's confirmations and gap closes directly; it must report
    # what pushing the steps one by one reports, in the same order, and leave the same
    # state (checked by the steps and the finish after it); also with off above on.
    rng = np.random.default_rng(5)
    for case in range(150):
        n_groups = int(rng.integers(1, 6))
        on = rng.uniform(0.2, 0.9, n_groups).astype(np.float32)
        off = (on * rng.uniform(0.1, 1.5 if case % 10 == 0 else 1.0, n_groups)).astype(np.float32)
        lead = (float(rng.uniform(0.2, 1.0)), int(rng.integers(0, 10)))
        t = Thresholds(on, off, rng.integers(1, 12, n_groups), rng.integers(0, 8, n_groups), *lead)
        stepwise, runs = HysteresisTracker(t), HysteresisTracker(t)
        k = 0
        for _ in range(int(rng.integers(1, 40))):
            scores = (rng.random(n_groups) * (rng.random() < 0.5)).astype(np.float32)
            count = int(rng.integers(1, 15))
            expected = [u for j in range(count) for u in stepwise.push(k + j, scores)]
            assert runs.push_run(k, count, scores) == expected, case
            k += count
        assert runs.finish() == stepwise.finish(), case


@pytest.mark.parametrize(
    ("lead_ratio", "max_lead_steps", "start"),
    [
        (1.0, 0, 4),  # no lead-in: the first step above on
        (0.5, 10, 2),  # back over the two steps >= 0.5 x on, not the 0.28 before them
        (0.5, 1, 3),  # at most one step back
        (0.25, 10, 2),  # 0.28 is above 0.25 x on but below off (0.3): never under off
    ],
)
def test_lead_in_moves_the_onset_back_over_the_steps_leading_up(lead_ratio, max_lead_steps, start):
    on, off = np.float32([1.0]), np.float32([0.3])
    x = np.float32([0.0, 0.28, 0.6, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])[:, None]
    t = Thresholds(on, off, np.array([2]), np.array([0]), lead_ratio, max_lead_steps)
    (span,) = find_spans(x, t)
    # The lead-in moves only the start: confirmed and ended as without it.
    assert (span.start, span.end, span.confirmed_at, span.peak) == (start, 7, 5, 1.0)
    tracker = HysteresisTracker(t)
    updates = [u for k, v in enumerate(x) for u in tracker.push(k, v)]
    assert [(u.state, u.start, u.end) for u in updates] == [("start", start, 6), ("end", start, 7)]


def test_lead_in_never_reaches_into_the_previous_event():
    # Two events of one group 0.2 s apart (max_gap 0): the second's lead-in stops at the
    # step after the first one's end, which scored below off.
    on, off = np.float32([1.0]), np.float32([0.5])
    x = np.float32([1.0, 1.0, 0.4, 0.6, 0.9, 1.0, 1.0])[:, None]
    t = Thresholds(on, off, np.array([1]), np.array([0]), 0.5, 100)
    assert [(s.start, s.end) for s in find_spans(x, t)] == [(0, 2), (3, 7)]


def test_step_score_is_numpy_quantile_exactly():
    # step_score sorts the few covering windows itself; it must give numpy.quantile's
    # values bit for bit (ties, quantiles on either side of an index's middle, a NaN).
    rng = np.random.default_rng(3)
    for case in range(300):
        n = 1 + case % 12
        q = (0.0, 0.2, 0.5, 0.75, 0.9999, float(rng.random()))[case % 6]
        scores = (rng.random((n, 9)) ** rng.uniform(0.3, 8)).astype(np.float32)
        scores[rng.random((n, 9)) < 0.2] = scores[0, 0]
        if case % 25 == 0:
            scores[n // 2, 4] = np.nan
        expected = np.quantile(scores, q, axis=0).astype(np.float32)
        np.testing.assert_array_equal(step_score(scores, q), expected, err_msg=f"{n=} {q=}")


@pytest.mark.parametrize(("method", "width"), [("median", 0.5), ("median", 1.0), ("ema", 0.4)])
def test_smoother_streams_the_offline_smoothing(method, width):
    values = np.random.default_rng(1).random((37, 2)).astype(np.float32)
    smoother = Smoother(method, width, 0.1)
    out = []
    for k, v in enumerate(values):
        out.extend(smoother.push(k, v))
    out.extend(smoother.finish())
    assert [k for k, _ in out] == list(range(37))
    np.testing.assert_array_equal(np.stack([v for _, v in out]), smooth(values, method, width, 0.1))
    if method == "median":
        h = round(width / 0.1) // 2
        np.testing.assert_array_equal(out[10][1], np.median(values[10 - h : 11 + h], axis=0))


def test_detector_announces_start_once_confirmed_and_end_after_the_gap():
    # One class; windows of 1 s every 0.1 s; a window scores 0.9 when it holds at least
    # 0.1 s of a sound lasting from 5 s to 8 s.
    config = EventsConfig(
        window=1.0, hop=0.1, agreement=1.0, trim=0.0, min_duration=0.5, max_gap=0.3
    )
    s = DetectorSettings.from_config(config, [Group("beep", (0,))])
    placement = windows_of(1500, 100, 10)
    probs = np.array(
        [[0.9 if min(b, 800) - max(a, 500) >= 10 else 0.0] for a, b, _ in placement],
        dtype=np.float32,
    )
    detector = EventDetector(s, "s")
    timeline = []
    for result in results_for("s", placement, probs, 0.0):
        timeline.extend((result.stop_frame, m) for m in detector.push(result))
    (at_start, start), (at_end, end) = timeline
    # Every window covering a step agrees only within the sound: the edges follow it.
    assert (start.state, start.onset, start.offset) == ("start", 5.0, None)
    assert (end.state, end.onset, end.offset) == ("end", 5.0, 8.0)
    # Confirmed by step 5.4-5.5 s, final once a window starting after 5.4 s is in.
    assert at_start == 550 + 100
    # Ended once 0.3 s of gap after 8.0 s are final (step 8.3-8.4 s).
    assert at_end == 840 + 100
    assert detector.latency_s == pytest.approx(1.1)


def test_detector_restarts_on_a_new_segment_and_rejects_other_lengths():
    config = EventsConfig(window=1.0, hop=0.5, agreement=1.0, trim=0.0, min_duration=0.0)
    s = DetectorSettings.from_config(config, [Group("beep", (0,))])
    loud = np.array([[0.9]], dtype=np.float32)
    first = results_for("s", [(0, 100, False), (50, 150, False)], [loud[0]] * 2, 100.0)
    second = results_for("s", [(0, 100, False)], [loud[0]], 200.0)  # clock jumped: frame 0 again
    detector = EventDetector(s, "s")
    messages = [m for r in first + second for m in detector.push(r)] + detector.finish()
    assert [(m.state, m.onset, m.offset) for m in messages] == [
        ("start", 100.0, None),
        ("end", 100.0, 101.5),
        ("start", 200.0, None),
        ("end", 200.0, 201.0),
    ]
    assert detector.counters.segments == 2
    wrong = results_for("s", [(0, 300, False)], [loud[0]], 0.0)[0]
    with pytest.raises(SoundwatchError, match=r"expects windows of 1\.0 s"):
        detector.push(wrong)


def test_handler_keeps_one_detector_per_stream():
    config = EventsConfig(window=1.0, hop=0.5, agreement=1.0, trim=0.0, min_duration=0.0)
    s = DetectorSettings.from_config(config, [Group("beep", (0,))])
    published = []
    handler = EventsHandler(s, published.append)
    loud = np.array([0.9], dtype=np.float32)
    for stream in ("a", "b"):
        for r in results_for(stream, [(0, 100, False), (50, 150, False)], [loud] * 2, 0.0):
            handler.on_result(r)
    handler.on_stream_end("a")
    handler.on_stream_end("b")
    assert [(m.stream, m.state) for m in published] == [
        ("a", "start"),
        ("b", "start"),
        ("a", "end"),
        ("b", "end"),
    ]
    for message in published:  # valid wire messages
        message.seq = 0
        assert decode(*encode(message)) == message
    assert published[0].offset is None and published[2].offset == 1.5


def test_a_reload_turns_the_lead_in_on_from_the_next_window():
    # Windows of 0.5 s every 0.5 s, each step covered by one window: a sound scoring 0.3
    # (soft) for 1 s, then 0.9 (loud) for 1 s, twice. threshold_on 0.5: the lead level is
    # 0.25, so with the lead-in the onset is the soft start, without it the loud one.
    def settings(lead_in: float | None) -> DetectorSettings:
        config = EventsConfig(
            window=0.5, hop=0.5, agreement=1.0, trim=0.0, min_duration=0.0, max_gap=0.0,
            threshold_on=0.5, lead_in=lead_in,
        )  # fmt: skip
        return DetectorSettings.from_config(config, [Group("beep", (0,))])

    pattern = [0.0, 0.3, 0.3, 0.9, 0.9, 0.0, 0.0]
    probs = [np.array([p], dtype=np.float32) for p in pattern * 2]
    placement = [(50 * k, 50 * k + 50, False) for k in range(len(probs))]
    results = results_for("a", placement, probs, 0.0)
    published = []
    handler = EventsHandler(settings(None), published.append)
    for r in results[: len(pattern)]:
        handler.on_result(r)
    handler.replace_settings(settings(0.5))
    for r in results[len(pattern) :]:
        handler.on_result(r)
    handler.on_stream_end("a")
    starts = [m.onset for m in published if m.state == "start"]
    assert starts == [1.5, 4.0]  # the loud start (1.5 s); after the reload, the soft one


def test_damage_counters_are_current_while_the_stream_runs():
    # Windows of 1 s every 0.5 s; the two starting at 1.0 s and 1.5 s were dropped, so the
    # steps 1.5-2.0 s are covered by no window. Status reads the counters during the run.
    config = EventsConfig(window=1.0, hop=0.5, agreement=1.0, trim=0.0, min_duration=0.0)
    s = DetectorSettings.from_config(config, [Group("beep", (0,))])
    handler = EventsHandler(s, lambda message: None)
    quiet = np.array([0.0], dtype=np.float32)
    placement = [(0, 100, False), (50, 150, False), (200, 300, False), (250, 350, False)]
    for r in results_for("a", placement, [quiet] * 4, 0.0):
        handler.on_result(r)
    assert handler.counters("a")["events_uncovered_steps"] == 5  # before the stream ends
    assert handler.counters("a")["events_windows"] == 4
    handler.on_stream_end("a")
    assert handler.counters("a")["events_uncovered_steps"] == 5  # counted once
    # A second segment with its own gap adds to the count as it happens.
    for r in results_for("a", placement[:3], [quiet] * 3, 100.0):
        handler.on_result(r)
    assert handler.counters("a")["events_uncovered_steps"] == 10
    assert handler.counters("a")["events_segments"] == 2


def test_aggregator_counts_late_windows_as_they_come():
    aggregator = StepAggregator(10, 0.0, 1)
    one = np.ones(1, dtype=np.float32)
    aggregator.push(0, 100, one)
    aggregator.push(50, 150, one)
    aggregator.push(40, 140, one)  # starts before the previous one: its steps are final
    assert aggregator.late_windows == 1
    aggregator.reset()  # a new segment keeps the count
    assert aggregator.late_windows == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    endings=st.lists(
        st.sampled_from(["final", "device_lost", "clock_jump"]), min_size=1, max_size=4
    ),
)
def test_every_start_gets_one_end_at_stream_end_device_loss_and_shutdown(seed, endings):
    # Segments end in every way the pipeline ends them: a final (shorter) window at the end
    # of a file or a lost device, the frame count restarting after a device came back, the
    # clock jumping; the last segment is cut by on_stream_end (shutdown) while still open.
    rng = np.random.default_rng(seed)
    config = EventsConfig(window=1.0, hop=0.5, agreement=0.8, trim=0.1, min_duration=0.2)
    s = DetectorSettings.from_config(config, [Group("a", (0,)), Group("b", (1,))])
    published = []
    handler = EventsHandler(s, published.append)
    origin = 1000.0
    for ending in [*endings, "shutdown"]:
        n_frames = int(rng.integers(150, 1200))
        placement = windows_of(n_frames, 100, 50)
        if ending != "final":  # only a file's end brings a final (maybe shorter) window
            placement = [(a, b, False) for a, b, _ in placement if b - a == 100]
        probs = np.full((len(placement), 2), 0.9, dtype=np.float32)  # loud: events stay open
        probs[: len(placement) // 3] = random_walk_probs(rng, len(placement) // 3, 2)
        for r in results_for("kitchen", placement, probs, origin):
            handler.on_result(r)
        origin += n_frames / 100 + (0.0 if ending == "device_lost" else 50.0)
        if ending == "shutdown":
            handler.on_stream_end("kitchen")
    starts = [m.event_id for m in published if m.state == "start"]
    ends = [m.event_id for m in published if m.state == "end"]
    assert starts, "loud windows must start events"
    assert sorted(starts) == sorted(ends) and len(set(starts)) == len(starts)
    for m in published:
        if m.state == "end":
            assert m.offset is not None and m.offset >= m.onset
    # Nothing is left open: ending the stream again publishes nothing.
    count = len(published)
    handler.on_stream_end("kitchen")
    assert len(published) == count
