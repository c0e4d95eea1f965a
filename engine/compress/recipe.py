"""The recipe recorded beside compressed weights: which method made them, with what settings, from which model
file and calibration text, and what each layer came out as. A typed document (pydantic, unknown fields refused,
`schema_version`), so a study or a later engine reads it back without guessing.

A distilled model's recipe also nests the recipe of the model it started from (`source`) and what the
training did (`distillation`): a recipe always says the whole way from the GGUF file to the weights.

The settings models are also what the CLI builds from its flags: their field descriptions are the `--help`.
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.formats import WeightFormat
from engine.quant.functions import INT4_GROUP_SIZES

SCHEMA_VERSION = 1
Projection = Literal["wqkv", "wo", "w13", "w2"]
PROJECTIONS: tuple[Projection, ...] = ("wqkv", "wo", "w13", "w2")
DenseFormat = Literal["fp32", "bf16"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    @abstractmethod
    def served_format(self) -> WeightFormat:
        """The engine format the compressed model runs in."""

    @abstractmethod
    def describe(self) -> str:
        """The settings that matter, in a few words."""


class _Int4Settings(_Settings):
    group_size: int = Field(128, description="int4 group size along the input dimension")

    @field_validator("group_size")
    @classmethod
    def _check_group(cls, value: int) -> int:
        if value not in INT4_GROUP_SIZES:
            raise ValueError(f"group size {value}: choose one of {', '.join(map(str, INT4_GROUP_SIZES))}")
        return value

    @property
    def served_format(self) -> WeightFormat:
        return "int4"


class GptqSettings(_Int4Settings):
    """GPTQ int4 of every block linear, fitted to the calibration text's activations."""

    method: Literal["gptq"] = "gptq"
    act_order: bool = Field(False, description="quantize columns by decreasing Hessian diagonal (static groups)")
    damp_fraction: float = Field(0.01, gt=0, lt=1, description="Hessian dampening, a fraction of its mean diagonal")
    block_size: int = Field(128, ge=1, description="columns per lazy-batch error update")
    calibration_tokens: int | None = Field(
        None, ge=16, description="tokens of the calibration text to read (default: all of it)"
    )

    def describe(self) -> str:
        return f"gptq, group {self.group_size}" + (", act-order" if self.act_order else "")


class RtnSettings(_Int4Settings):
    """Round-to-nearest int4 (min/max per group) of every block linear: the baseline GPTQ is measured against."""

    method: Literal["rtn"] = "rtn"

    def describe(self) -> str:
        return f"round-to-nearest, group {self.group_size}"


class PruneSettings(_Settings):
    """Magnitude pruning of every block linear: unstructured at one sparsity per layer, or 2:4."""

    method: Literal["prune"] = "prune"
    sparsity: float | None = Field(None, gt=0, lt=1, description="fraction of each layer's weights set to zero")
    pattern: Literal["2:4"] | None = Field(None, description="semi-structured: 2 of every 4 weights along the input")
    format: DenseFormat = Field("fp32", description="dense format the pruned weights are stored and served in")

    @model_validator(mode="after")
    def _one_kind(self) -> PruneSettings:
        if (self.sparsity is None) == (self.pattern is None):
            raise ValueError("give exactly one of a sparsity (unstructured) or the 2:4 pattern")
        return self

    @property
    def served_format(self) -> WeightFormat:
        return self.format

    def describe(self) -> str:
        return f"magnitude pruning, sparsity {self.sparsity:g}" if self.sparsity is not None else "2:4 pruning"


class LowRankSettings(_Settings):
    """SVD low-rank factorization of the chosen block projections, at a rank fraction or an energy threshold."""

    method: Literal["lowrank"] = "lowrank"
    rank_fraction: float | None = Field(None, gt=0, le=1, description="rank as a fraction of min(out, in)")
    energy: float | None = Field(None, gt=0, le=1, description="keep this share of the squared singular values")
    projections: tuple[Projection, ...] = Field(PROJECTIONS, description="which block projections to factor")
    format: DenseFormat = Field("fp32", description="dtype of the two factors (and of the other layers)")
    activation_aware: bool = Field(
        False,
        description="weight each input channel by its RMS on the calibration text before the SVD, "
        "so the rank goes where the layer's output needs it (fitted block by block, as GPTQ is)",
    )
    calibration_tokens: int | None = Field(
        None, ge=16, description="tokens of the calibration text to read (activation-aware only; default: all of it)"
    )

    @model_validator(mode="after")
    def _one_target(self) -> LowRankSettings:
        if (self.rank_fraction is None) == (self.energy is None):
            raise ValueError("give exactly one of a rank fraction or an energy threshold")
        if not self.projections or len(set(self.projections)) != len(self.projections):
            raise ValueError(f"choose one or more distinct projections from {', '.join(PROJECTIONS)}")
        if self.calibration_tokens is not None and not self.activation_aware:
            raise ValueError("plain SVD reads no calibration text: calibration tokens need activation_aware")
        return self

    @property
    def served_format(self) -> WeightFormat:
        return self.format

    def describe(self) -> str:
        target = f"rank {self.rank_fraction:g}" if self.rank_fraction is not None else f"energy {self.energy:g}"
        kind = "activation-aware low-rank" if self.activation_aware else "low-rank"
        return f"{kind}, {target} of {', '.join(self.projections)}"


class DistillSettings(_Settings):
    """Logit distillation of an int4 model toward fp32: its codes fixed, its group scales and zeros (and norms) trained
    on the calibration text within a time budget (engine/compress/distill.py)."""

    method: Literal["distill"] = "distill"
    minutes: float = Field(gt=0, description="training time budget in minutes (a monotonic clock; the fp32 pass apart)")
    learning_rate: float = Field(
        2e-3, gt=0, lt=1, description="AdamW step, relative: log-scales, zeros in units of their scale, norm gains"
    )
    window: int = Field(256, ge=16, le=2048, description="calibration tokens per training step")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps even with budget left")
    train_norms: bool = Field(True, description="also train the RMSNorm weights (stored in fp32, so served exactly)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay of the relative offsets toward the start")
    calibration_tokens: int | None = Field(
        None, ge=16, description="tokens of the calibration text to train on (default: all of it)"
    )
    seed: int = Field(0, description="seed of the window order")

    @property
    def served_format(self) -> WeightFormat:
        return "int4"

    def describe(self) -> str:
        return f"logit distillation toward fp32 ({self.minutes:g} min budget)"


Settings = Annotated[
    GptqSettings | RtnSettings | PruneSettings | LowRankSettings | DistillSettings, Field(discriminator="method")
]


class CalibrationRecord(BaseModel):
    """The data a method was fitted to: never the evaluation text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    sha256: str
    tokens: int
    window: int


class LayerRecord(BaseModel):
    """One linear layer after compression. Figures a method does not produce are None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    out_features: int
    in_features: int
    stored_bytes: int = Field(description="bytes the layer's stored tensors take")
    sparsity: float | None = Field(None, description="fraction of weights that are exactly zero")
    rank: int | None = None
    energy_kept: float | None = Field(None, description="share of squared singular values kept")
    weight_rel_fro: float | None = Field(None, description="||W' - W|| / ||W|| against the fp32 weight")
    calib_output_rel_err: float | None = Field(
        None, description="||X W'^T - X W^T|| / ||X W^T|| on the layer's calibration inputs"
    )
    rtn_calib_output_rel_err: float | None = Field(
        None, description="the same for round-to-nearest int4 at the same group size (GPTQ only)"
    )


class DistillationRecord(BaseModel):
    """What a distillation did: against which teacher, for how long, and how the training loss moved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str = Field(description="the weight format of the teacher, loaded from the same GGUF file")
    trained: list[str] = Field(description="what was trained; the int4 codes never change")
    trained_values: int = Field(description="number of trained values")
    budget_s: float
    stopped_by: Literal["budget", "max_steps"]
    steps: int
    tokens_seen: int = Field(description="calibration tokens through the student, repeats counted")
    train_s: float = Field(description="seconds of the training loop (monotonic clock)")
    teacher_s: float = Field(description="seconds of the one fp32 pass whose outputs every step reuses")
    loss_first: float = Field(description="training KL(fp32 || student), nats per token, at the first step")
    loss_last: float = Field(description="the same at the last step")
    loss_per_pass: list[float] = Field(
        description="mean training KL over each pass through the windows (the last may be partial)"
    )


class Recipe(BaseModel):
    """How a weights directory was made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    settings: Settings
    format: WeightFormat = Field(description="the engine format the weights are served in")
    source_file: str
    source_sha256: str
    calibration: CalibrationRecord | None = None
    layers: list[LayerRecord]
    created_at: datetime
    compress_s: float = Field(description="seconds the compression took (model loads excluded)")
    torch_version: str
    device: str
    source: Recipe | None = Field(None, description="a distilled model: the recipe of the model it started from")
    distillation: DistillationRecord | None = None

    @model_validator(mode="after")
    def _distilled_from_something(self) -> Recipe:
        distilled = isinstance(self.settings, DistillSettings)
        if distilled != (self.source is not None) or distilled != (self.distillation is not None):
            raise ValueError("a distilled model's recipe, and only that, records its source recipe and the training")
        return self

    def summary(self) -> str:
        """One line: the method with its settings (after its source's, when distilled), and the served format."""
        made = self.settings.describe()
        if self.source is not None:
            made = f"{self.source.settings.describe()}, then {made}"
        return f"{made}, served as {self.format}"
