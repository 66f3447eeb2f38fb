"""Single-cell domain (work in progress)."""
