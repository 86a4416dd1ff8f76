"""``soundwatch finetune``: train a backbone's last blocks and a new head on labelled clips."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("finetune")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_csv",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV with filename and label (or category) columns",
)
@click.option("--model", "model_name", default="mn04", show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--epochs", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--freeze-until", type=int, help="feature blocks before this stay fixed")
@click.option("--window", type=float, default=3.0, show_default=True, help="seconds")
@click.option("--batch", type=click.IntRange(1, 512), default=16, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), help="steps per epoch at most (quick runs)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--threads", type=int)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint"
)
def finetune(
    data_dir: Path,
    labels_csv: Path,
    model_name: str,
    weights: Path | None,
    epochs: int,
    freeze_until: int | None,
    window: float,
    batch: int,
    max_steps: int | None,
    device: str,
    threads: int | None,
    out: Path,
) -> None:
    """Fine-tune MODEL's last blocks and a new head on labelled clips.

    Writes the checkpoint (use it with --weights OUT) and its head beside it
    (OUT with .swhead; use it with --head).
    """
    from soundwatch.cli import user_errors

    @user_errors
    def train() -> None:
        import torch

        from soundwatch.models import load_model
        from soundwatch.models.worker import resolve_device
        from soundwatch.training.finetune import (
            FinetuneSettings,
            read_labels_csv,
            save_finetuned,
        )
        from soundwatch.training.finetune import (
            finetune as run_finetune,
        )
        from soundwatch.validation import check_whole_frames

        try:
            check_whole_frames(window=window)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--window") from None
        if threads is not None:
            torch.set_num_threads(threads)
        items = read_labels_csv(labels_csv, data_dir)
        loaded = load_model(model_name, weights)
        settings = FinetuneSettings(
            window_s=window,
            epochs=epochs,
            batch=batch,
            freeze_until=freeze_until,
            max_steps=max_steps,
        )
        model, head = run_finetune(
            loaded,
            items,
            settings,
            resolve_device(device),
            progress=lambda line: click.echo(f"soundwatch: {line}", err=True),
        )
        checkpoint, head_path = save_finetuned(model, head, out, out.stem, loaded)
        click.echo(
            f"soundwatch: {len(head.labels)} labels from {len(items)} clips; checkpoint "
            f"{checkpoint} (--weights), head {head_path} (--head)",
            err=True,
        )

    train()
