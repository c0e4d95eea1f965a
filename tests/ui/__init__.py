"""Tests of the dashboard (`app.py`, `pages`, `widgets`).

A package, so that test modules named alike in other folders do not clash.
"""
