"""End-to-end jobs: run (one pair), sweep (a grid), train (full SAIL), loading a trained model."""
