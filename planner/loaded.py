"""Latency under load: what a request sees when other requests share its replica's forward passes.

The roofline (planner.roofline) prices one forward pass alone. A serving engine runs mixed passes:
the sequences already decoding each add one token, and new prompts are prefilled beside them (in
chunks of what is left of the batched-token budget when prefill is chunked, whole otherwise).
This module turns those passes into the figures a client measures:

- TPOT at a batch of b: over one request's output, the other b - 1 sequences are each replaced
  about once, so their prompts' tokens ride along in some of its steps. Those steps cost
  max(memory, compute of the decodes and the prompt tokens); the rest are plain decode steps.
- TTFT: the request's own prompt, chunk by chunk beside the others' decodes, plus the wait for
  the prompts ahead of it. Prompts queue for the prefill share of the replica as an M/D/1 queue:
  arrivals at rate lambda (other clients' requests in a closed loop, the offered rate in an open
  one), a fixed service time S (one prompt's prefill), mean wait rho S / (2 (1 - rho)), rho =
  lambda S. Past the replicas' capacity the requests wait for a slot instead: in a closed loop of C
  clients each cycle takes C / (the saturated request rate), and the wait is that cycle less the
  time a request is served.
- Saturated rate: the largest batch the limits allow whose prompts still fit in the batched-token
  budget of the steps they share (b (1 + I/O) <= T + I/O), each step priced as above.

Every pass also pays a fixed cost (launch, scheduling, sampling), a cost per sequence in the batch
(the scheduler's and sampler's bookkeeping) and, under tensor parallelism, two all-reduces per layer
of the pass's tokens x hidden size. Those figures live in planner/data/engines.json with sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from planner.roofline import StepTime

FIXED_POINT_ITERATIONS = 40


@dataclass(frozen=True, slots=True)
class StepCost:
    """Prices one forward pass of a replica: `b` sequences decoding and `p` prompt tokens prefilled beside them.

    `decode(b)` is the roofline's decode step (its memory and compute time; its own overhead is not
    used here), `prompt` one whole prompt of `input_tokens` alone, from which a chunk's compute is
    the proportional share (a causal prompt's attention FLOPs summed over its chunks equal the
    whole prompt's)."""

    decode: Callable[[int], StepTime]
    prompt: StepTime
    input_tokens: int
    fixed_s: float
    per_seq_s: float
    comm: Callable[[float], float]  # all-reduce time of a pass over this many tokens
    prompt_fixed_s: float = 0.0  # a pass that carries prompt tokens costs this much more (fitted from step logs)

    def __call__(self, b: int, p: float = 0.0) -> float:
        share = p / self.input_tokens if self.input_tokens else 0.0
        if b <= 0:
            memory, compute = self.prompt.memory_s, self.prompt.compute_s * share
        else:
            step = self.decode(b)
            memory, compute = step.memory_s, step.compute_s + self.prompt.compute_s * share
        extra = self.prompt_fixed_s if p > 0 else 0.0
        return max(memory, compute) + self.fixed_s + extra + self.per_seq_s * max(b, 0) + self.comm(b + p)


@dataclass(frozen=True, slots=True)
class Budget:
    """The batched-token budget of one pass, and whether a prompt may be split across passes."""

    tokens: int
    chunked: bool

    def chunk_room(self, decoding: int, prompt_tokens: int) -> float:
        """Prompt tokens one pass takes beside `decoding` sequences: what the budget leaves (at least one
        token), or the whole prompt when prefill is not chunked (the engine raised the budget to fit it)."""
        room = max(1.0, float(self.tokens - decoding))
        return room if self.chunked else max(room, float(prompt_tokens))


def prompt_service_s(cost: StepCost, budget: Budget, others: int, input_tokens: int) -> float:
    """Time from a prompt's first prefill pass to its first token, beside `others` decoding sequences."""
    room = budget.chunk_room(others, input_tokens)
    chunks = max(1, math.ceil(input_tokens / room))
    return chunks * cost(others, input_tokens / chunks)


def tpot_s(cost: StepCost, budget: Budget, batch: int, input_tokens: int, output_tokens: int) -> float:
    """Mean time between a request's output tokens while `batch` sequences decode (itself included)."""
    steps = max(1, output_tokens - 1)
    plain = cost(batch)
    if batch <= 1 or output_tokens <= 1:
        return plain
    prompts = (batch - 1) * steps / output_tokens  # the others' replacements during this request's output
    needed = prompts * input_tokens
    room = budget.chunk_room(batch, input_tokens)
    # A pass takes one prompt (or one chunk of it) as it arrives; only when more prompt tokens arrive per
    # step than one prompt holds are several packed into a pass, up to the budget.
    per_pass = min(room, max(min(float(input_tokens), room), needed / steps))
    mixed_steps = needed / per_pass
    if mixed_steps <= steps:
        return ((steps - mixed_steps) * plain + mixed_steps * cost(batch, per_pass)) / steps
    return cost(batch, needed / steps)  # every step carries prompt tokens beyond the budget


def sustainable_batch(cap: int, budget: Budget, input_tokens: int, output_tokens: int) -> int:
    """The largest batch <= cap whose replacement prompts fit the steps they share: b (1 + I/O) <= T + I/O
    (with chunked prefill; without it a prompt takes one pass whatever the budget)."""
    if not budget.chunked or output_tokens <= 0:
        return cap
    ratio = input_tokens / output_tokens
    return max(1, min(cap, math.floor((budget.tokens + ratio) / (1 + ratio))))


def md1_wait_s(arrivals_s: float, service_s: float) -> float:
    """Mean wait in an M/D/1 queue (Pollaczek-Khinchine with a fixed service time); inf at or past rho = 1."""
    rho = arrivals_s * service_s
    if rho <= 0:
        return 0.0
    if rho >= 1:
        return math.inf
    return rho * service_s / (2 * (1 - rho))


@dataclass(frozen=True, slots=True)
class Loaded:
    """One replica at a batch: its first-token wait and service, inter-token time and end-to-end time."""

    batch: int
    queue_s: float  # waiting for the prompts ahead (M/D/1) and, past capacity, for a slot
    prompt_s: float
    tpot_s: float
    e2e_s: float

    @property
    def ttft_s(self) -> float:
        return self.queue_s + self.prompt_s


def at_batch(
    cost: StepCost,
    budget: Budget,
    batch: int,
    input_tokens: int,
    output_tokens: int,
    *,
    arrivals_s: float | None = None,
    extra_wait: Callable[[int], float] = lambda b: 0.0,
) -> Loaded:
    """A replica holding `batch` requests. `arrivals_s` is the per-replica request rate of an open loop;
    None: a closed loop whose other batch - 1 clients each send their next request when one ends, so
    prompts arrive at (batch - 1) / e2e (solved as a fixed point, since e2e holds the wait)."""
    prompt = prompt_service_s(cost, budget, batch - 1, input_tokens)
    tpot = tpot_s(cost, budget, batch, input_tokens, output_tokens)
    decode = max(0, output_tokens - 1) * tpot
    extra = extra_wait(batch)
    if arrivals_s is not None:
        wait = md1_wait_s(arrivals_s, prompt) + extra
        return Loaded(batch, wait, prompt, tpot, wait + prompt + decode)
    wait = extra
    for _ in range(FIXED_POINT_ITERATIONS):
        e2e = wait + prompt + decode
        new = md1_wait_s((batch - 1) / e2e, prompt) + extra
        if not math.isfinite(new):
            break  # the prompts alone fill the replica: keep the last finite wait
        converged = abs(new - wait) <= 1e-9 * max(1.0, e2e)
        wait = new
        if converged:
            break
    return Loaded(batch, wait, prompt, tpot, wait + prompt + decode)


def allreduce_s(tokens: float, hidden: int, tp: int, layers: int, links: list[tuple[float, float]]) -> float:
    """Two all-reduces per layer (attention out, MLP out) of tokens x hidden 16-bit activations, each at
    the faster of the link's algorithms: latency + 2 (tp - 1) / tp x bytes / bus bandwidth."""
    if tp <= 1 or tokens <= 0 or not links:
        return 0.0
    moved = 2 * (tp - 1) / tp * tokens * hidden * 2
    one = min(latency_s + moved / bus_bytes_s for latency_s, bus_bytes_s in links)
    return 2 * layers * one
