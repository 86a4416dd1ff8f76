"""Training on a user's labelled clips: ``finetune`` (the backbone's last blocks plus a head)."""
