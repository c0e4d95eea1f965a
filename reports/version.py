"""The Preflight version written into every result and report (bumped by hand at releases)."""

__version__ = "0.1.0"
