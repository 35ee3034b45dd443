"""The one alignment-training engine: heads, losses, streaming, steps, checkpoints, evaluation."""
