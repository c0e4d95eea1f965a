"""Preflight's tests: one folder per package they test; shared helpers live at this level."""
