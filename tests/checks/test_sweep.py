"""The sweep's step limits, and the option dataclasses that are built by name only (no mocks, no server)."""

from __future__ import annotations

import pytest

from checks.load.client import RequestOptions
from checks.load.endpoint import Endpoint
from checks.load.loadgen import RunLimits
from checks.load.metrics import Slo
from checks.load.sweep import SweepOptions, step_limits
from checks.load.targets import BundledOptions
from checks.load.workloads import SyntheticSpec
from checks.readiness.check import Declared


@pytest.mark.parametrize("stop_when_saturated", [False, True])
def test_every_sweep_step_keeps_the_sweeps_limits_but_warmup_and_seed(stop_when_saturated: bool) -> None:
    """A sweep asked not to stop when saturated keeps that at every step: the Poisson steps used to drop it."""
    limits = RunLimits(requests=5, duration_s=2.0, warmup_requests=3, seed=10, stop_when_saturated=stop_when_saturated)
    for step in range(4):  # 0 is the saturation step, then one per Poisson rate
        assert step_limits(limits, step) == RunLimits(
            requests=5, duration_s=2.0, warmup_requests=0, seed=10 + step, stop_when_saturated=stop_when_saturated
        )


@pytest.mark.parametrize(
    ("options", "args"),
    [
        (RunLimits, (5,)),
        (SweepOptions, (3,)),
        (BundledOptions, ("int4",)),
        (RequestOptions, (0.0,)),
        (Slo, (500.0,)),
        (Declared, (60,)),
        (SyntheticSpec, (16, 8, "uniform")),
        (Endpoint, ("http://127.0.0.1:9", "m", "chat")),
    ],
)
def test_options_are_named_not_positional(options: type, args: tuple) -> None:
    """kw_only: a field added or moved can never shift a positional value into the wrong option."""
    with pytest.raises(TypeError, match="positional argument"):
        options(*args)
