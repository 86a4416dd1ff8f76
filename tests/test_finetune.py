"""``soundwatch finetune`` for one short epoch on real ESC-50 clips: the checkpoint loads
like any other (strictly, through ``--weights``), only the unfrozen blocks changed, and
its head loads with it and tags the clips with the new labels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from soundwatch.cli import main
from soundwatch.heads import load_head
from soundwatch.models import load_model


def test_finetune_one_short_epoch_gives_a_checkpoint_and_head_that_load(
    shared, tmp_path: Path
) -> None:
    weights = shared("models/mn04_as_mAP_432.pt")
    esc50 = shared("audio/esc50-dev")
    with open(esc50 / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in ("dog", "rooster")]
    data = tmp_path / "data"
    data.mkdir()
    for row in rows:
        shutil.copy(esc50 / "audio" / row["filename"], data / row["filename"])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "label"])
        writer.writerows([r["filename"], "my_" + r["category"]] for r in rows)
    out = tmp_path / "mine.pt"
    result = CliRunner().invoke(
        main,
        [
            *("finetune", "--data", str(data), "--labels", str(labels), "--weights", str(weights)),
            *("--epochs", "1", "--max-steps", "1", "--batch", "4", "--freeze-until", "15"),
            *("--device", "cpu", "--threads", "2", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "epoch 1/1" in result.output

    tuned = load_model("mn04", out, download=False)  # strict: same architecture and keys
    original = torch.load(weights, map_location="cpu", weights_only=True)
    state = tuned.model.state_dict()
    changed = {k.split(".")[1] for k in state if not torch.equal(state[k], original[k])}
    assert changed and changed <= {"15", "16"}, changed  # only the blocks after 15 trained

    head = load_head(out.with_suffix(".swhead"))
    assert head.labels == ["my_dog", "my_rooster"]  # not the preset's dog and rooster
    head.check_compatible("mn04", tuned.sha256, 3.0)
    tagged = CliRunner().invoke(
        main,
        [
            *("tag", str(data / rows[0]["filename"]), "--weights", str(out), "--backend", "torch"),
            *("--head", str(out.with_suffix(".swhead")), "--json", "--threads", "2"),
        ],
    )
    assert tagged.exit_code == 0, tagged.output
    windows = [json.loads(line) for line in tagged.stdout.splitlines()]
    assert windows and set(windows[0]["head"]) == {"my_dog", "my_rooster"}
