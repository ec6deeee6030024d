"""Every configuration key with its default (`default.py`); the top-level configs/*.py override it."""
