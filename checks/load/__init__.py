"""Measuring load: targets, workloads, the async client, load profiles, per-request records,
metric definitions, the sweep and the resource timeline (python -m checks bench)."""
