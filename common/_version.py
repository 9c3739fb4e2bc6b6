"""The package version, in one place (read by pyproject and the build info metric)."""

__version__ = "0.1.0"
