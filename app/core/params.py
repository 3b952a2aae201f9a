"""Parameter models and result types of the three job kinds.

Every limit is one of docs/computations.md."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.core.hd import normalise as hd_normalise

#: Longest babel text, in symbols after lower-casing (one page).
BABEL_MAX_CHARS = 3200
#: Longest hd text, in characters as submitted.
HD_MAX_CHARS = 65_536


def storable(value: str) -> str:
    """Reject lone surrogates and NUL: results, hashes and PostgreSQL need storable UTF-8."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


def _not_blank(value: str) -> str:
    """Reject strings made only of whitespace."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value


EngineText = Annotated[
    str, Field(min_length=1, max_length=20_000), AfterValidator(storable),
    AfterValidator(_not_blank),
]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Params(BaseModel):
    """Strict base: no coercion, unknown fields and NaN/Infinity rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class EncodeParams(_Params):
    """Params of `encode`; `codec` comes first so the text check can see it."""

    codec: Literal["babel", "hd"] = "babel"
    # The cap of either codec, checked first so huge inputs cost nothing more.
    text: Annotated[str, Field(max_length=HD_MAX_CHARS), AfterValidator(storable)]

    @field_validator("text")
    @classmethod
    def _text_fits_codec(cls, text: str, info: ValidationInfo) -> str:
        """Length rules depend on the codec (babel: 1..3200 after lower(); hd: non-blank)."""
        codec = info.data.get("codec")
        if codec == "babel":
            # lower() never shortens a string, so long inputs are refused before it.
            length = len(text) if len(text) > BABEL_MAX_CHARS else len(text.lower())
            if not 1 <= length <= BABEL_MAX_CHARS:
                raise ValueError(f"babel text must be 1..{BABEL_MAX_CHARS} characters")
        elif codec == "hd":
            if len(text) > HD_MAX_CHARS:
                raise ValueError(f"hd text must be at most {HD_MAX_CHARS} characters")
            if not hd_normalise(text):
                raise ValueError("hd text must not be empty after normalisation")
        return text


class EnumerateParams(_Params):
    """Params of `enumerate`."""

    query: Annotated[
        str, Field(min_length=1, max_length=1000), AfterValidator(storable),
        AfterValidator(_not_blank),
    ]
    max_results: Annotated[int, Field(ge=1, le=100)] = 10
    depth: Annotated[int, Field(ge=1, le=10)] = 1
    with_pages: bool = False


class EngineOutput(_Params):
    """One reasoning engine's answer in a governor cycle."""

    text: EngineText
    confidence: Unit
    label: Annotated[str, Field(max_length=100), AfterValidator(storable)] | None = None


class Cycle(_Params):
    """The two engines' outputs of one cycle."""

    left: EngineOutput
    right: EngineOutput


class GovernorConfig(_Params):
    """Governor thresholds; every field optional with the spec's default."""

    max_cycles: Annotated[int, Field(ge=1, le=10)] = 3
    similarity_threshold: Unit = 0.90
    risk_threshold: Unit = 0.35
    initial_contradiction_budget: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    contradiction_decay_rate: Annotated[float, Field(ge=0.0, le=10.0)] = 0.175
    quality_improvement_threshold: Unit = 0.05


class EvaluateParams(_Params):
    """Params of `evaluate`."""

    cycles: Annotated[list[Cycle], Field(min_length=1, max_length=10)]
    config: GovernorConfig = GovernorConfig()


ParamsModel = type[EncodeParams] | type[EnumerateParams] | type[EvaluateParams]

#: Params model of each job kind.
PARAMS_MODELS: dict[str, ParamsModel] = {
    "encode": EncodeParams,
    "enumerate": EnumerateParams,
    "evaluate": EvaluateParams,
}


class BabelResult(TypedDict):
    """Result of `encode` with codec babel."""

    codec: Literal["babel"]
    address: str
    length: int
    replaced: int
    page_sha256: str


class HdResult(TypedDict):
    """Result of `encode` with codec hd."""

    codec: Literal["hd"]
    dimensions: int
    trigrams: int
    ones: int
    vector: str
    sigma_hash: str


Confidence = Literal["high", "medium", "sparse", "minimal"]


class CoherenceScores(TypedDict):
    """score_coherence output: each score x100, plus a confidence band."""

    overall: float
    language: float
    structure: float
    ngram: float
    exact: float
    confidence: Confidence


class Candidate(TypedDict):
    """One candidate address of `enumerate`."""

    address: str
    ngram: str
    score: float
    depth: int
    page_sha256: NotRequired[str]
    coherence: NotRequired[CoherenceScores]


class EnumerateResult(TypedDict):
    """Result of `enumerate`."""

    query: str
    candidates: list[Candidate]
    total: int


Decision = Literal["STOP", "CONTINUE"]
StopReason = Literal[
    "CONVERGENCE_ACHIEVED",
    "RISK_THRESHOLD_EXCEEDED",
    "CONTRADICTION_EXHAUSTED",
    "PLATEAU_DETECTED",
    "MAX_CYCLES_REACHED",
]


class QualityMetrics(TypedDict):
    """The four quality metrics of one cycle."""

    coherence: float
    calibration: float
    evidence_quality: float
    actionability: float


class CycleRecord(TypedDict):
    """Everything computed for one evaluated cycle."""

    cycle: int
    similarity: float
    contradiction: float
    risk: float
    quality_metrics: QualityMetrics
    composite_quality: float
    contradiction_spent: float
    remaining_budget: float
    decision: Decision
    stop_reason: StopReason | None


class FinalScores(TypedDict):
    """Scores of the last evaluated cycle."""

    similarity: float
    risk: float
    composite_quality: float
    remaining_budget: float


class Trajectories(TypedDict):
    """Per-cycle series, in cycle order."""

    quality: list[float]
    risk: list[float]
    similarity: list[float]


class EvaluateResult(TypedDict):
    """Result of `evaluate`."""

    decision: Decision
    stop_reason: StopReason | None
    cycles_evaluated: int
    final: FinalScores
    contradiction_budget_used: float
    cycles: list[CycleRecord]
    trajectories: Trajectories


EncodeResult = BabelResult | HdResult
Result = EncodeResult | EnumerateResult | EvaluateResult
