"""Figures and run reports (matplotlib: the [viz] extra)."""
