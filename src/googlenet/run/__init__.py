"""What a run leaves behind and reads back: the device it ran on, checkpoints, metrics and the JSONL records."""
