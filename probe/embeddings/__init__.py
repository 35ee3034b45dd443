"""The embedding cache and batched encoding into it."""
