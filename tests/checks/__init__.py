"""Tests of `checks`; a package so that test modules named alike in other folders do not clash."""
