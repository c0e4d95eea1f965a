"""Hardware detection and (later) sizing and optimization-plan recommendation."""

from planner.hardware import Hardware, detect

__all__ = ["Hardware", "detect"]
