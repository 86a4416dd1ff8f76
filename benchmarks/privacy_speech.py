"""How well the tagger's speech classes tell clips with speech from clips without.

The recorder drops an event's clip when a window over it scores ``speech_threshold`` on
the speech classes (``soundwatch.recorder.privacy.SPEECH_LABELS``). This prints, per clip,
the highest window speech score (3 s windows, 0.5 s hop, mn04), for the clips with speech
(``speech.wav``, the AudioSet speech+bell clip) and for the 100 ESC-50 dev clips (no
speech) and the other reference clips, then the margin a threshold leaves on each side.

    .venv/bin/python benchmarks/privacy_speech.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from soundwatch.config import Config  # noqa: E402
from soundwatch.recorder.privacy import speech_indices  # noqa: E402
from soundwatch.runner import Tagger, tag_file  # noqa: E402

SHARED = REPO.parent / "shared"
SPEECH = ["speech.wav", "audioset_R9_ZSCveAHg_speech_bell.wav"]


def main() -> None:
    config = Config.model_validate(
        {"model": {"weights": str(SHARED / "models/mn04_as_mAP_432.pt"), "device": "cpu"}}
    )
    tagger = Tagger.from_config(config)
    index = speech_indices(tagger.labels)

    def score(path: Path) -> float:
        tagged = tag_file(path, tagger, 3.0, 0.5)
        return float(max(np.max(w.probs[index]) for w in tagged.windows))

    clips = SHARED / "audio" / "clips"
    with_speech = {name: score(clips / name) for name in SPEECH}
    without = {p.name: score(p) for p in sorted(clips.glob("*.wav")) if p.name not in SPEECH}
    esc = SHARED / "audio" / "esc50-dev"
    with open(esc / "labels.csv") as labels:
        categories = {r["filename"]: r["category"] for r in csv.DictReader(labels)}
    for path in sorted((esc / "audio").glob("*.wav")):
        without[f"{path.name} ({categories.get(path.name, '?')})"] = score(path)
    print("| clip | speech | max window speech score |")
    print("|---|---|---|")
    for name, value in with_speech.items():
        print(f"| {name} | yes | {value:.3f} |")
    for name, value in sorted(without.items(), key=lambda kv: -kv[1])[:8]:
        print(f"| {name} | no | {value:.3f} |")
    print(f"\nlowest score with speech: {min(with_speech.values()):.3f}")
    print(f"highest score without ({len(without)} clips): {max(without.values()):.3f}")
    for threshold in (0.2, 0.3, 0.5, 0.7):
        kept = sum(v < threshold for v in without.values())
        dropped = sum(v >= threshold for v in with_speech.values())
        print(
            f"threshold {threshold}: speech clips dropped {dropped}/{len(with_speech)}, "
            f"clips without speech kept {kept}/{len(without)}"
        )


if __name__ == "__main__":
    main()
