"""Measuring load: targets, workloads, the async client, load profiles, metric definitions, the
sweep and the resource timeline (python -m checks bench). The records, summaries and result
they produce are typed documents in `reports`."""
