"""The package version, in one place (read by the CLI's --version and PNG metadata)."""

__version__ = "0.1.0"
