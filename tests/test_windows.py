"""The mel windower: windows are exact slices of the frame stream, for any push sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soundwatch.dsp.windows import MelWindower
from soundwatch.errors import SoundwatchError


def frames_with_ids(n: int, n_mels: int = 4) -> np.ndarray:
    """Frames whose values are their index, so a window shows which frames it holds."""
    return np.tile(np.arange(n, dtype=np.float32), (n_mels, 1))


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(0, 400),
    window=st.integers(1, 60),
    hop_fraction=st.floats(0.01, 1.0),
    phase_fraction=st.sampled_from([0.0, 0.0, 0.3, 0.618, 0.99]),
    pushes=st.lists(st.integers(1, 90), min_size=1, max_size=50),
)
def test_windows_are_exact_slices_for_any_pushes(
    total: int, window: int, hop_fraction: float, phase_fraction: float, pushes: list[int]
) -> None:
    hop = max(1, int(window * hop_fraction))
    phase = min(int(phase_fraction * hop), hop - 1)
    frames = frames_with_ids(total)
    windower = MelWindower(window, hop, n_mels=4, phase_frames=phase)
    got = []
    done = 0
    sizes = iter(pushes * (total // max(1, sum(pushes)) + 2))
    while done < total:
        k = min(next(sizes), total - done)
        got += windower.push(frames[:, done : done + k])
        done += k
    got += windower.flush()

    regular = [w for w in got if not w.final]
    # The first window at frame 0, every later one ``phase`` frames after the unphased grid.
    expected = [0, *range(phase + hop, total - window + 1, hop)]
    assert [w.start for w in regular] == (expected if total >= window else [])
    for w in got:
        np.testing.assert_array_equal(w.mel, frames[:, w.start : w.stop])
        assert w.stop - w.start == min(window, total)
    finals = [w for w in got if w.final]
    if total == 0:
        assert not got
    elif regular and regular[-1].stop == total:
        assert not finals
    else:
        assert len(finals) == 1 and finals[0].stop == total
    assert got == [] or got[-1].stop == total


def test_phase_outside_the_hop_is_refused() -> None:
    with pytest.raises(SoundwatchError, match="phase must be 0 to hop - 1 frames"):
        MelWindower(300, 50, phase_frames=50)


def test_reset_starts_a_new_stream() -> None:
    windower = MelWindower(10, 5, n_mels=4)
    windower.push(frames_with_ids(7))
    windower.reset()
    windows = windower.push(frames_with_ids(10))
    assert [(w.start, w.stop) for w in windows] == [(0, 10)]


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(SoundwatchError, match="hop"):
        MelWindower(10, 20)
    with pytest.raises(SoundwatchError, match="shape"):
        MelWindower(10, 5, n_mels=4).push(np.zeros((3, 2), dtype=np.float32))
