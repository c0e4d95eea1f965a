"""Typed documents Preflight saves and reads back: readiness reports, check results, SLO
profiles and benchmark results (pydantic, `extra="forbid"`, an integer `schema_version`).

This package depends on nothing else of ours (DESIGN.md): the checks fill these
documents, the pages and exports read them.
"""
