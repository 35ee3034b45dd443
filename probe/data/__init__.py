"""Data sources: specs, readers, built-in sets, templates."""
