"""Which memory rule a vLLM release follows: its engine generation, what its start-up profile charges
outside the weights, and where that rule came from (planner/data/engines.json `vllm_versions`).

vLLM sizes its KV cache as total x gpu_memory_utilization - (weights + profiled peak + non-torch memory),
but what the profile sees has changed between releases: the V0 engine's profile and the V1 engine's
(gpu_worker.determine_available_memory with utils.memory_profiling) charge different non-torch memory,
and V1's profile ends with a dummy sampler pass over max_num_seqs rows of logits whose peak depends on
the sampler the release picks by default (FlashInfer's kernels, or PyTorch's sort). So the version is a
condition of the prediction: `--engine-version` takes a release ("0.10.1.1") or a generation ("V0",
"V1"); without one the catalog's default release is planned, and the assumptions say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from planner.errors import PlannerError

_RELEASE = re.compile(r"(?<![\d.#])v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?![\d])", re.IGNORECASE)
_GENERATION = re.compile(r"\bV([01])(?![.\d\w])", re.IGNORECASE)

# The option predict and recommend (and the Plan page) take, with its one help text.
EngineVersion = Annotated[
    str | None,
    Field(
        description="vLLM release (e.g. 0.10.1.1) or engine generation (V0, V1) whose memory rule to plan "
        "(default: the catalog's release, named in the assumptions); other engines ignore it"
    ),
]


# The top-k/top-p path a V1 engine samples with: FlashInfer's kernels where FlashInfer is installed (the
# default of the releases that prefer it), else PyTorch's sort. A V1 install without FlashInfer logs
# "FlashInfer is not available. Falling back to the PyTorch-native implementation of top-p & top-k
# sampling", and its profile's sampler pass keeps more bytes per logit alive: less KV cache.
SamplerName = Literal["flashinfer", "pytorch"]
VllmSampler = Annotated[
    SamplerName | None,
    Field(
        description="vLLM V1: the top-k/top-p sampler the server runs, when it is not the release's default "
        "(pytorch: FlashInfer is not installed, the log says 'Falling back to the PyTorch-native implementation')"
    ),
]
SamplerKind = Literal["v0", "flashinfer", "pytorch"]
CudaGraphReserveGib = Annotated[
    float | None,
    Field(
        ge=0,
        le=1024,
        description="vLLM >= 0.21: the CUDA-graph estimate its start-up log printed ('Estimated CUDA graph memory: "
        "X GiB total'), taken out of the KV cache as vLLM does (default: not charged, and the plan says so)",
    ),
]
# How a tensor-parallel group's GPUs reach each other; "auto" asks the GPU catalog (peer_to_peer).
TpTransportName = Literal["auto", "p2p", "host"]
TpTransportKind = Annotated[
    TpTransportName,
    Field(
        description="how a tensor-parallel group's GPUs exchange data: p2p (NVLink or PCIe peer-to-peer in one "
        "node), host (no P2P, or a group spanning nodes: through host memory or the network), or auto (p2p "
        "unless the GPU catalog says the card has no peer-to-peer, as the RTX 4090); only p2p keeps per-rank "
        "GPU buffers"
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplerBuffer(_Strict):
    """One tensor alive at the dummy sampler pass's peak, in bytes per logit (per row x vocabulary entry)."""

    what: str = Field(min_length=1)
    bytes: PositiveFloat
    source: str = Field(min_length=1)


class VllmMemoryRegime(_Strict):
    """The releases one memory rule holds for: from_version inclusive, until_version exclusive.

    None for non_torch_gib / tp_rank_gib keeps the generic rule of engines.json (`vllm_memory`'s share of
    VRAM, `tp_rank_overhead`), which was read off V0 logs."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    engine: Literal["V0", "V1"]
    from_version: str | None = None
    until_version: str | None = None
    non_torch_gib: float | None = Field(None, ge=0, description="non-torch memory the profile charges at TP 1")
    tp_rank_gib: float | None = Field(None, ge=0, description="added on every rank of a tensor-parallel group")
    sampler_kind: SamplerKind = Field(
        description="which sampler the profile's dummy pass runs, as --vllm-sampler names it"
    )
    sampler: str = Field(min_length=1, description="the top-k/top-p path of the profile's dummy sampler pass")
    sampler_buffers: list[SamplerBuffer] = Field(min_length=1)
    sampler_holds_hidden_states: bool = Field(
        description="the profile pass's hidden states (batched tokens x hidden) stay alive through the sampler"
    )
    source: str = Field(min_length=1)

    @property
    def sampler_bytes_per_logit(self) -> float:
        return sum(b.bytes for b in self.sampler_buffers)

    def covers(self, release: tuple[int, ...]) -> bool:
        low = parse_release(self.from_version) if self.from_version else None
        high = parse_release(self.until_version) if self.until_version else None
        return (low is None or release >= low) and (high is None or release < high)


class ObservedReserve(_Strict):
    gib: PositiveFloat
    source: str = Field(min_length=1)


class CudaGraphReserve(_Strict):
    """From `from_version` on, vLLM takes an estimate of its CUDA-graph memory out of the KV cache by default.

    The estimate depends on the model, the capture sizes and the graph modes, and no public rule sizes it, so
    the planner does not charge it: a plan for such a release says so, with the range published logs show
    and the environment switch that gives back the planned KV cache."""

    from_version: str
    env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    source: str = Field(min_length=1)
    observed: list[ObservedReserve] = Field(min_length=1)

    @model_validator(mode="after")
    def _a_release(self) -> CudaGraphReserve:
        parse_release(self.from_version)  # a ValueError here is pydantic's validation error
        return self

    def charged_note(self, gib: float) -> str:
        return (
            f"vLLM {self.from_version} and later take their estimate of CUDA-graph memory out of the KV cache "
            f"({self.env}, on by default): {gib:g} GiB per GPU charged as given (--cuda-graph-reserve-gib, "
            "from the start-up log's 'Estimated CUDA graph memory: X GiB total' line)"
        )

    def note(self) -> str:
        low, high = min(o.gib for o in self.observed), max(o.gib for o in self.observed)
        return (
            f"vLLM {self.from_version} and later also take their estimate of CUDA-graph memory out of the KV "
            f"cache ({self.env}, on by default): not planned here; published estimates {low:g}-{high:g} GiB per "
            f"GPU, so expect up to that much less KV cache, or launch with {self.env}=0 for the planned one (the "
            "graphs then come out of what --gpu-memory-utilization leaves)"
        )


class VllmVersions(_Strict):
    """The regimes in release order, and the release planned when the user names none."""

    default: str = Field(min_length=1)
    default_source: str = Field(min_length=1)
    cuda_graph_reserve: CudaGraphReserve | None = None
    regimes: list[VllmMemoryRegime] = Field(min_length=1)

    @model_validator(mode="after")
    def _ranges_tile(self) -> VllmVersions:
        """Each regime starts where the previous ends, so every release has exactly one rule."""
        for before, after in zip(self.regimes, self.regimes[1:], strict=False):
            if before.until_version is None or before.until_version != after.from_version:
                raise ValueError(f"vLLM regime {after.id} must start where {before.id} ends")
        if self.regimes[0].from_version is not None or self.regimes[-1].until_version is not None:
            raise ValueError("the first vLLM regime must be open below and the last open above")
        if regime_for_release(self, parse_release(self.default)).engine != "V1":
            raise ValueError("the default vLLM release must be a V1 one (the engine vLLM runs today)")
        return self


@dataclass(frozen=True, slots=True)
class ResolvedVllmMemory:
    """The rule a prediction uses, and the words the assumptions show for it."""

    regime: VllmMemoryRegime
    version: str  # as the user gave it, or the catalog default
    given: bool  # False: the catalog's default release was planned
    graph_reserve: CudaGraphReserve | None = None  # the release takes a CUDA-graph estimate out of the KV cache
    sampler_from: str | None = None  # the regime whose sampler terms replaced the release's (--vllm-sampler)
    graph_reserve_gib: float | None = None  # the CUDA-graph estimate the user read off a start-up log, charged

    def label(self) -> str:
        which = self.version if self.given else f"{self.version} (planner default: no engine version given)"
        name = which if which.lower().startswith("vllm") else f"vLLM {which}"
        swapped = f", with {self.sampler_from}'s sampler pass" if self.sampler_from else ""
        return f"{name}: {self.regime.engine} engine, {self.regime.id} rule{swapped}"

    def planned_for(self) -> str:
        """The line a vLLM launch command and a plan's notes carry (vLLM has no flag that pins its
        start-up profile, so the command can only say which release it was planned for)."""
        line = f"KV cache planned for {self.label()}"
        if self.graph_reserve_gib is not None:
            line += f"; CUDA-graph reserve {self.graph_reserve_gib:g} GiB charged as given"
        elif self.graph_reserve is not None:
            line += f"; its CUDA-graph reserve is not planned: {self.graph_reserve.env}=0 gives this KV cache"
        return line


def parse_release(text: str) -> tuple[int, ...]:
    """'0.10.1.1' -> (0, 10, 1, 1); a missing part counts as 0, so '0.11' sorts as 0.11.0."""
    m = _RELEASE.search(text)
    if m is None:
        raise ValueError(f"no vLLM release number in {text!r}")
    parts = tuple(int(p) for p in m.groups() if p is not None)
    return parts + (0,) * (4 - len(parts))


def regime_for_release(table: VllmVersions, release: tuple[int, ...]) -> VllmMemoryRegime:
    return next(r for r in table.regimes if r.covers(release))


def resolve_vllm_memory(table: VllmVersions, version: str | None) -> ResolvedVllmMemory:
    """The rule for a version (see `_resolve`), with the CUDA-graph reserve its release takes, if any."""
    resolved = _resolve(table, version)
    reserve = table.cuda_graph_reserve
    release = _RELEASE.search(resolved.version)
    if reserve is None or resolved.regime.engine != "V1" or release is None:
        return resolved
    if parse_release(release.group(0)) < parse_release(reserve.from_version):
        return resolved
    return replace(resolved, graph_reserve=reserve)


def _resolve(table: VllmVersions, version: str | None) -> ResolvedVllmMemory:
    """The rule for a version as a user or a published source writes it.

    A release number decides by range; a generation alone ("V0", "V1 engine") picks that generation
    (V1 alone: the default release's rule); an explicit "V0" beside a release (a V0 engine run on a
    release that also ships V1) keeps V0. Text with neither is an error, not a guess."""
    if version is None or not version.strip():
        return ResolvedVllmMemory(regime_for_release(table, parse_release(table.default)), table.default, False)
    generation = _GENERATION.search(version)
    has_release = _RELEASE.search(version) is not None
    if generation and generation.group(1) == "0":
        v0 = [r for r in table.regimes if r.engine == "V0"]
        return ResolvedVllmMemory(v0[-1], version, True)
    if has_release:
        regime = regime_for_release(table, parse_release(version))
        if generation and regime.engine != "V1":
            regime = next(r for r in table.regimes if r.engine == "V1")  # V1 on an early release: its first rule
        return ResolvedVllmMemory(regime, version, True)
    if generation:  # V1 without a release: the default release's rule, named as such
        default = regime_for_release(table, parse_release(table.default))
        return ResolvedVllmMemory(default, f"{version} (planned as {table.default})", True)
    raise PlannerError(
        f"engine version {version!r}: give a vLLM release (e.g. {table.default}) or an engine generation (V0 or V1)"
    )


def with_sampler(table: VllmVersions, resolved: ResolvedVllmMemory, sampler: str | None) -> ResolvedVllmMemory:
    """The release's rule with another V1 sampler's profile terms, when the server samples with one the
    release does not default to (an install without FlashInfer falls back to PyTorch's sort). Everything
    else (non-torch memory, the per-rank charge, the CUDA-graph reserve) stays the release's."""
    if sampler is None or sampler == resolved.regime.sampler_kind:
        return resolved
    if resolved.regime.engine != "V1":
        raise PlannerError(f"--vllm-sampler {sampler}: the V0 engine has one sampler; it applies to V1 releases")
    donor = next((r for r in table.regimes if r.engine == "V1" and r.sampler_kind == sampler), None)
    if donor is None:
        raise PlannerError(f"--vllm-sampler {sampler}: no vLLM memory rule in engines.json describes that sampler")
    terms = {
        k: getattr(donor, k) for k in ("sampler_kind", "sampler", "sampler_buffers", "sampler_holds_hidden_states")
    }
    return replace(resolved, regime=resolved.regime.model_copy(update=terms), sampler_from=donor.id)


def rule_for_engine(
    engine_id: str,
    table: VllmVersions,
    version: str | None,
    sampler: str | None = None,
    graph_reserve_gib: float | None = None,
) -> ResolvedVllmMemory | None:
    """vLLM's rule for the version asked (or the default), with the sampler asked and the CUDA-graph estimate
    the user read off a log; None for other engines, which keep the generic rule of engines.json vllm_memory
    (and refuse vLLM's own options)."""
    if engine_id != "vllm":
        for flag, value in (("--vllm-sampler", sampler), ("--cuda-graph-reserve-gib", graph_reserve_gib)):
            if value is not None:
                raise PlannerError(f"{flag} is a vLLM setting; this plan's engine is {engine_id}")
        return None
    resolved = with_sampler(table, resolve_vllm_memory(table, version), sampler)
    return replace(resolved, graph_reserve_gib=graph_reserve_gib) if graph_reserve_gib is not None else resolved


def rule_assumptions(rule: ResolvedVllmMemory | None) -> dict[str, str]:
    """The assumptions a vLLM prediction lists for its memory: which release's rule, and what it charges."""
    if rule is None:
        return {}
    r = rule.regime
    non_torch = f"{r.non_torch_gib:g} GiB" if r.non_torch_gib is not None else "the V0 share of VRAM (vllm_memory)"
    per_rank = f"{r.tp_rank_gib:g} GiB" if r.tp_rank_gib is not None else "tp_rank_overhead"
    reserve: dict[str, str] = {}
    if rule.graph_reserve_gib is not None:
        given = rule.graph_reserve_gib
        said = (
            rule.graph_reserve.charged_note(given)
            if rule.graph_reserve is not None
            else f"{given:g} GiB per GPU of CUDA-graph memory charged as given (--cuda-graph-reserve-gib)"
        )
        reserve = {"vllm_cuda_graph_reserve": said}
    elif rule.graph_reserve is not None:
        reserve = {"vllm_cuda_graph_reserve": rule.graph_reserve.note()}
    return {
        **reserve,
        "vllm_memory_version": rule.label(),
        "vllm_memory_rule": f"non-torch {non_torch}, plus {per_rank} per rank under TP; activations: the larger "
        f"of the MLP pass and the sampler pass; sampler: {r.sampler}, {r.sampler_bytes_per_logit:g} B per logit"
        + (", the pass's hidden states still held" if r.sampler_holds_hidden_states else ""),
    }


def _range_text(regime: VllmMemoryRegime) -> str:
    low, high = regime.from_version, regime.until_version
    if low and high:
        return f"{low} to before {high}"
    return f"{low} and later" if low else f"before {high}"


def version_choices(table: VllmVersions) -> dict[str, str]:
    """One version per memory rule, newest first, as a picker offers them: value (what --engine-version
    takes) -> label. The default release stands for its own rule and is named as the default; a rule open
    below is named by its engine generation."""
    choices: dict[str, str] = {}
    default = regime_for_release(table, parse_release(table.default))
    for regime in reversed(table.regimes):
        value = table.default if regime is default else regime.from_version or regime.engine
        label = f"vLLM {_range_text(regime)}: {regime.engine} engine, {regime.id} rule"
        choices[value] = f"{label} (planner default: {table.default})" if regime is default else label
    return choices
