"""The package version, kept in one place (read by setup.py and keras_dla)."""

__version__ = "0.1.0"
