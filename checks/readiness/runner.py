"""The checklist runner: start or probe the target, measure under load, run every check, decide.

Order matters and is fixed here, in one place:
1. The target is started (bundled) or probed (remote) once and shared by every check.
2. When performance or resources are checked and no result was handed over (--from),
   one benchmark runs first, on a fresh server, while the metrics scraper records the
   target's /metrics into a timeline.
3. The checks run category by category (performance, resources, monitoring, security,
   reliability), then the final checks that may end the target (SIGTERM).

Fail closed: a check that raises or overruns its deadline is ERROR; once a bundled
server has died, the remaining checks are ERROR without being run; a stop by the user
turns every check not yet run into ERROR. So a verdict never rests on a line that was
not measured.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from checks.load.benchmark import BenchmarkConfig, make_target, measure
from checks.load.endpoint import Endpoint
from checks.load.loadgen import Progress
from checks.load.targets import BundledTarget, RemoteTarget, TargetError
from checks.readiness.check import Check, CheckContext, Declared
from checks.readiness.config import ChecklistConfig
from checks.readiness.inputs import load_inputs
from checks.readiness.metrics_scrape import TIMELINE_KEY
from checks.readiness.monitoring import MONITORING_CHECKS
from checks.readiness.performance import performance_checks
from checks.readiness.reliability import FINAL_CHECKS, RELIABILITY_CHECKS
from checks.readiness.resources import RESOURCE_CHECKS
from checks.readiness.security import SECURITY_CHECKS
from checks.readiness.slo import goodput_slo
from planner.hardware import detect
from reports.check_result import Category, CheckResult
from reports.readiness_report import MEASURED_HERE, DeclaredInfo, ReadinessReport, TargetInfo, ToolInfo
from reports.slo_profile import SloProfile
from reports.verdict import decide
from reports.version import __version__

CHECK_DEADLINE_S = 300.0  # one check, however slow the target: past this it is ERROR


@dataclass(frozen=True, slots=True)
class ChecklistProgress:
    """Where a run is, for a progress line or the page."""

    phase: str
    done: int
    total: int
    current: str | None
    last: CheckResult | None


ProgressFn = Callable[[ChecklistProgress], None]


def checks_for(categories: list[Category], slo: SloProfile) -> list[Check]:
    """Every check of the chosen categories, in the order they run; the final (target-ending) ones last."""
    by_category = {
        Category.PERFORMANCE: performance_checks(slo),
        Category.RESOURCES: RESOURCE_CHECKS,
        Category.MONITORING: MONITORING_CHECKS,
        Category.SECURITY: SECURITY_CHECKS,
        Category.RELIABILITY: RELIABILITY_CHECKS,
    }
    ordered = [check for c in categories for check in by_category[c]]
    return ordered + [check for check in FINAL_CHECKS if check.category in categories]


def benchmark_config(config: ChecklistConfig, slo: SloProfile) -> BenchmarkConfig:
    """The load the checklist measures: the config's sizes, the profile's per-request limits for goodput."""
    limits = goodput_slo(slo)
    profile = config.profile or ("sweep" if config.target_qps else "concurrency:4")
    return BenchmarkConfig(
        target=config.target,
        api_key=config.api_key,
        model=config.model,
        api=config.api,
        profile=profile,
        requests=config.requests,
        input_len=config.input_len,
        output_len=config.output_len,
        slo_ttft_ms=limits and limits.ttft_ms,
        slo_tpot_ms=limits and limits.tpot_ms,
        slo_e2e_ms=limits and limits.e2e_ms,
        threads=config.threads,
        eager=config.eager,
        weights=config.weights,
    )


async def run_one(check: Check, ctx: CheckContext) -> CheckResult:
    """One check, timed, with a deadline; anything it raises is ERROR with the reason."""
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(check.run(ctx, check), CHECK_DEADLINE_S)
    except TimeoutError:
        result = check.error(f"the check did not finish within {CHECK_DEADLINE_S:g} s")
    except Exception as exc:  # noqa: BLE001 - fail closed: a broken check is ERROR, never a crash or a PASS
        result = check.error(f"the check could not run: {type(exc).__name__}: {exc}")
    return result.model_copy(update={"duration_s": round(time.perf_counter() - start, 3)})


def declared_limits(config: ChecklistConfig) -> Declared:
    """What the operator declared, as the checks read it (the report keeps the same fields)."""
    return Declared(**{f.name: getattr(config, f.name) for f in fields(Declared)})


def _not_run(check: Check, why: str) -> CheckResult:
    return check.error(f"not run: {why}").model_copy(update={"duration_s": 0.0})


def _target_info(config: ChecklistConfig, target: BundledTarget | RemoteTarget, model: str | None) -> TargetInfo:
    if isinstance(target, BundledTarget):
        return TargetInfo(
            kind="bundled",
            base_url=target.base_url,
            model=model,
            api=config.api,
            api_key_set=True,
            quant=target.options.quant,
            weights_dir=target.options.weights_dir,
            server_log=str(target.log_path),
        )
    return TargetInfo(
        kind="remote", base_url=config.target, model=model, api=config.api, api_key_set=config.api_key is not None
    )


class Checklist:
    """One readiness run; `run()` returns the report. Use a new one per run."""

    def __init__(
        self,
        config: ChecklistConfig,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.progress = progress or (lambda _p: None)
        self.cancel = cancel or threading.Event()
        self.status = on_status or (lambda _m: None)
        # The files it is judged by, before anything runs: a bad one is the user's input, one line (inputs.py).
        inputs = load_inputs(config.slo, config.from_path, config.plan_path)
        self.slo, self.given, self.plan = inputs.slo, inputs.given, inputs.plan
        self.load = benchmark_config(config, self.slo)  # a bad --profile is a ValidationError here, before any run
        self.categories = config.categories()
        self.checks = checks_for(self.categories, self.slo)
        self.results: list[CheckResult] = []
        self.notes: list[str] = []

    def _tick(self, phase: str, current: str | None) -> None:
        last = self.results[-1] if self.results else None
        self.progress(ChecklistProgress(phase, len(self.results), len(self.checks), current, last))

    def run(self) -> ReadinessReport:
        started = datetime.now(UTC)
        target = make_target(self.load, self.status, self.cancel)
        ctx: CheckContext | None = None
        try:
            try:
                endpoint = target.__enter__()
            except TargetError as exc:
                why = f"the target could not be used: {exc}"
                self.notes.append(why)
                self.results = [_not_run(c, why) for c in self.checks]
            else:
                if endpoint.server_pid is None and self.config.server_pid is not None:
                    # --server-pid names a local server we did not start: the measured run watches it too,
                    # or the RSS line has no timeline to judge (seen on a GPU run against `engine serve`).
                    endpoint = replace(endpoint, server_pid=self.config.server_pid)
                ctx = self._context(endpoint, target)
                self._measure(ctx, target)
                self._run_checks(ctx, target)
        finally:
            target.__exit__(None, None, None)
        return self._report(started, target, ctx)

    def _context(self, endpoint: Endpoint, target: BundledTarget | RemoteTarget) -> CheckContext:
        c = self.config
        declared = declared_limits(c)
        if isinstance(target, BundledTarget) and declared.server_log is None:
            declared.server_log = target.log_path  # the bundled server's own log: where prompts would leak
        return CheckContext(
            endpoint=endpoint,
            exposure=c.exposure,
            slo=self.slo,
            declared=declared,
            benchmark=self.given,
            bundled=target if isinstance(target, BundledTarget) else None,
            plan=self.plan,
            cancel=self.cancel,
        )

    def _measure(self, ctx: CheckContext, target: BundledTarget | RemoteTarget) -> None:
        """Run the checklist's own benchmark when performance or resources are judged and none was handed over."""
        if self.given is not None:
            self.notes.append(f"performance judged from {self.config.from_path}, measured earlier")
            if self.given.metrics is not None:
                ctx.scratch[TIMELINE_KEY] = self.given.metrics
            return
        if not {Category.PERFORMANCE, Category.RESOURCES} & set(self.categories):
            return
        bench = self.load
        self.status(
            f"measuring: {bench.profile}, {bench.requests} requests of {bench.input_len} in / "
            f"{bench.output_len} out tokens"
        )
        try:
            ctx.benchmark = measure(
                bench, ctx.endpoint, target, progress=self._load_progress, cancel=self.cancel, on_status=self.status
            )
        except (ValueError, OSError) as exc:
            self.notes.append(f"the benchmark could not run: {exc}")
            return
        if ctx.benchmark.metrics is not None:  # the benchmark scrapes /metrics around its own load
            ctx.scratch[TIMELINE_KEY] = ctx.benchmark.metrics

    def _load_progress(self, p: Progress) -> None:
        total = f"/{p.total}" if p.total else ""
        self.progress(
            ChecklistProgress(
                "load",
                0,
                len(self.checks),
                f"measuring: {p.completed}{total} requests done, {p.failed} failed, {p.in_flight} in flight",
                None,
            )
        )

    def _run_checks(self, ctx: CheckContext, target: BundledTarget | RemoteTarget) -> None:
        for check in self.checks:
            self._tick(check.category.value, check.title)
            if self.cancel.is_set():
                self.results.append(_not_run(check, "the run was stopped"))
                continue
            if isinstance(target, BundledTarget) and target.proc is not None and target.proc.poll() is not None:
                self.results.append(_not_run(check, f"the bundled server exited ({target.proc.returncode})"))
                continue
            self.results.append(asyncio.run(run_one(check, ctx)))
        self._tick("done", None)

    def _report(
        self, started: datetime, target: BundledTarget | RemoteTarget, ctx: CheckContext | None
    ) -> ReadinessReport:
        c = self.config
        benchmark = ctx.benchmark if ctx is not None else self.given
        source = None if benchmark is None else (str(c.from_path) if self.given else MEASURED_HERE)
        model = ctx.endpoint.model if ctx is not None else c.model
        return ReadinessReport(
            tool=ToolInfo(version=__version__),
            started_at=started,
            finished_at=datetime.now(UTC),
            environment=detect().to_dict(),
            target=_target_info(c, target, model),
            slo=self.slo,
            exposure=c.exposure,
            categories=self.categories,
            plan=self.plan,
            declared=DeclaredInfo(
                **{
                    k: str(v) if isinstance(v, Path) else v
                    for k, v in asdict(ctx.declared if ctx else declared_limits(c)).items()
                }
            ),
            benchmark=benchmark,
            benchmark_source=source,
            metrics_timeline=None if ctx is None else ctx.scratch.get(TIMELINE_KEY),
            checks=self.results,
            verdict=decide(self.results),
            notes=self.notes,
        )


def run_checklist(
    config: ChecklistConfig,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    on_status: Callable[[str], None] | None = None,
) -> ReadinessReport:
    """Run the readiness checklist `config` describes and return its report (see the module docstring)."""
    return Checklist(config, progress, cancel, on_status).run()
