"""What the api accepts and answers; these models are also the OpenAPI schema."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from digit_predictor.db.queries import CONFIDENCE_BINS, Prediction, Statistics
from digit_predictor.db.registry import ModelRecord

Digit = Annotated[int, Field(ge=0, le=9)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Probabilities = Annotated[
    list[Probability],
    Field(min_length=10, max_length=10, description="P(digit) for 0..9; sums to 1"),
]


class ErrorResponse(BaseModel):
    """Every error: `detail` says what went wrong and what to do about it."""

    detail: str = Field(description="what went wrong and how to fix it")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for validation errors: each field that failed, and why"
    )
    request_id: str | None = Field(default=None, description="quote it when reporting a problem")


class PredictionCreated(BaseModel):
    id: int | None = Field(
        description="row id; null when the row is queued (202) because the database is down"
    )
    request_id: UUID = Field(description="identifies the row, stored or queued")
    digit: Digit
    confidence: Probability = Field(
        description="calibrated probability of the predicted digit: of drawings answered with "
        "confidence 0.9, about 90% are right"
    )
    probabilities: Probabilities
    is_digit: bool = Field(
        description="false: the drawing does not look like a single digit (a letter, a "
        "scribble, a shape, two digits...); `digit` is then only the closest guess"
    )
    ood_score: Probability = Field(
        description="how unlike a digit the drawing is, 0..1 (higher = less like a digit); "
        "`is_digit` is false above the model's threshold"
    )
    model_version: str
    created_at: datetime
    latency_ms: float = Field(
        ge=0,
        description=(
            "time from the start of decoding to the model's answer (decode, preprocess, the "
            "model, and under load the wait for the drawing's batch)"
        ),
    )
    source: str | None = None
    model_input_png: str = Field(
        description="base64 PNG of the 28x28 image the model saw, after preprocessing"
    )
    stored: bool = Field(description="true: written to the database; false: queued (202)")


class PredictionRecord(BaseModel):
    id: int
    request_id: UUID
    digit: Digit
    confidence: Probability
    probabilities: Probabilities
    model_version: str
    created_at: datetime
    latency_ms: float | None
    source: str | None
    true_digit: Digit | None = Field(description="the person's answer, once given")
    feedback_at: datetime | None
    correct: bool | None = Field(description="true_digit == digit; null without feedback")
    is_digit: bool | None = Field(
        default=None, description="false: not a digit, by the detector; null for older rows"
    )
    ood_score: Probability | None = Field(
        default=None, description="how unlike a digit, 0..1; null for older rows"
    )

    @classmethod
    def from_row(cls, row: Prediction) -> PredictionRecord:
        return cls(
            id=row.id,
            request_id=row.request_id,
            digit=row.predicted_digit,
            confidence=row.confidence,
            probabilities=row.probabilities,
            model_version=row.model_version,
            created_at=row.created_at,
            latency_ms=row.latency_ms,
            source=row.source,
            true_digit=row.true_digit,
            feedback_at=row.feedback_at,
            correct=row.is_correct,
            is_digit=row.is_digit,
            ood_score=row.ood_score,
        )


class PredictionPage(BaseModel):
    items: list[PredictionRecord] = Field(description="newest first, without image bytes")
    limit: int
    offset: int = Field(description="rows skipped (0 when paging with `before`)")
    before: int | None = Field(
        default=None, description="the cursor this page was asked with: rows older than this id"
    )
    next: int | None = Field(
        default=None,
        description=(
            "cursor for the next, older page: pass it as `before`; null on the last page "
            "(and with `offset`)"
        ),
    )
    total: int = Field(description="number of stored predictions")


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    true_digit: Annotated[StrictInt, Field(ge=0, le=9, description="the digit that was drawn")]


class DigitStats(BaseModel):
    digit: Digit
    feedback_count: int
    correct: int
    accuracy: float | None


class DayCount(BaseModel):
    day: date
    count: int


class VersionStats(BaseModel):
    model_version: str
    first_day: date | None = Field(description="first local day it answered, in `time_zone`")
    last_day: date | None = Field(description="last local day it answered")
    predictions: int
    feedback_count: int
    correct: int
    accuracy: float | None = Field(description="on its predictions with feedback")


class ConfidenceBinStats(BaseModel):
    lower: float = Field(description="the bin is [lower, upper); the last includes 1")
    upper: float
    feedback_count: int = Field(description="predictions with feedback in this bin")
    correct: int
    accuracy: float | None
    mean_confidence: float | None


class Stats(BaseModel):
    total_predictions: int
    feedback_count: int
    correct_count: int
    accuracy: float | None = Field(description="on predictions with feedback; null without")
    mean_confidence: float | None
    per_digit: list[DigitStats] = Field(description="by the true digit, 0..9")
    confusion: list[list[int]] = Field(description="confusion[true][predicted]")
    per_day: list[DayCount] = Field(description="local days in `time_zone`, oldest first")
    per_version: list[VersionStats] = Field(
        description="accuracy on feedback per model version, the first to answer first"
    )
    reliability: list[ConfidenceBinStats] = Field(
        description=f"{CONFIDENCE_BINS} equal confidence bins over the predictions with feedback"
    )
    expected_calibration_error: float | None = Field(
        description="mean |accuracy - confidence| over the bins, weighted by their counts"
    )
    time_zone: str
    high_score_today: PredictionRecord | None = Field(
        description="most confident prediction since local midnight in `time_zone`"
    )

    @classmethod
    def build(cls, stats: Statistics, high: Prediction | None, time_zone: str) -> Stats:
        return cls(
            total_predictions=stats.total_predictions,
            feedback_count=stats.feedback_count,
            correct_count=stats.correct_count,
            accuracy=stats.accuracy,
            mean_confidence=stats.mean_confidence,
            per_digit=[
                DigitStats(
                    digit=d.digit,
                    feedback_count=d.feedback_count,
                    correct=d.correct,
                    accuracy=d.accuracy,
                )
                for d in stats.per_digit
            ],
            confusion=stats.confusion,
            per_day=[DayCount(day=day, count=count) for day, count in stats.per_day],
            per_version=[
                VersionStats(
                    model_version=v.model_version,
                    first_day=v.first_day,
                    last_day=v.last_day,
                    predictions=v.predictions,
                    feedback_count=v.feedback_count,
                    correct=v.correct,
                    accuracy=v.accuracy,
                )
                for v in stats.per_version
            ],
            reliability=[
                ConfidenceBinStats(
                    lower=b.lower,
                    upper=b.upper,
                    feedback_count=b.feedback_count,
                    correct=b.correct,
                    accuracy=b.accuracy,
                    mean_confidence=b.mean_confidence,
                )
                for b in stats.reliability
            ],
            expected_calibration_error=stats.expected_calibration_error,
            time_zone=time_zone,
            high_score_today=PredictionRecord.from_row(high) if high else None,
        )


class ModelCard(BaseModel):
    """The model card shipped beside the weights, as written by training."""

    model_config = ConfigDict(extra="allow")

    version: str
    architecture: str


class ModelVersion(BaseModel):
    """One version in the model registry."""

    version: str
    created_at: datetime
    parent_version: str | None
    arch: str
    sha256: str
    status: Literal["candidate", "champion", "retired", "rejected"]
    promoted_at: datetime | None = Field(description="when it last became the champion")
    reason: str | None = Field(description="why it was promoted, rejected or retired")
    gate: dict[str, Any] | None = Field(
        description="the gate table (champion vs this challenger, same data, same run), "
        "for versions made by retraining"
    )

    @classmethod
    def from_record(cls, record: ModelRecord) -> ModelVersion:
        gate = record.card.get("gate")
        return cls(
            version=record.version,
            created_at=record.created_at,
            parent_version=record.parent_version,
            arch=record.arch,
            sha256=record.sha256,
            status=record.status,  # type: ignore[arg-type]  # the table's CHECK guarantees it
            promoted_at=record.promoted_at,
            reason=record.reason,
            gate=gate if isinstance(gate, dict) else None,
        )


class ChampionModel(ModelVersion):
    card: dict[str, Any] = Field(description="the champion's model card")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    model_loaded: bool
    model_version: str | None
    database: Literal["up", "down"]
    queued_writes: int = Field(description="predictions waiting to be written to the database")
    reasons: list[str] = Field(description="why the service is not ready; empty when ready")


class Preview(BaseModel):
    """The answer for a drawing that is not stored (predict as you draw)."""

    digit: Digit
    confidence: Probability = Field(description="probability of the predicted digit")
    probabilities: Probabilities
    is_digit: bool = Field(
        description="false: the drawing does not look like a single digit; `digit` is then "
        "only the closest guess"
    )
    ood_score: Probability = Field(description="how unlike a digit, 0..1 (higher = less like)")
    model_version: str = Field(description="the model that answered (the champion can change)")
    latency_ms: float = Field(
        ge=0,
        description=(
            "time from the start of decoding to the model's answer (decode, preprocess, the "
            "model, and under load the wait for the drawing's batch)"
        ),
    )
    model_input_png: str = Field(
        description="base64 PNG of the 28x28 image the model saw, after preprocessing"
    )
    stored: Literal[False] = Field(
        default=False, description="always false: a preview is never written anywhere"
    )


AttributionRow = Annotated[list[float], Field(min_length=28, max_length=28)]


class Explanation(BaseModel):
    """Why the model answered what it did: each input pixel's share of one digit's score."""

    prediction_id: int
    digit: Digit = Field(description="the digit explained: the predicted one, or `?digit=`")
    predicted_digit: Digit = Field(description="the digit the prediction answered")
    method: Literal["integrated_gradients"]
    baseline: Literal["black"] = Field(
        description="the reference input: an empty (black) field, so pixels without ink get 0"
    )
    steps: int = Field(description="quadrature points on the path from baseline to drawing")
    model_version: str = Field(description="the model explained (the one serving now)")
    probability: Probability = Field(description="P(digit) for this drawing under that model")
    logit: float = Field(description="the digit's logit (pre-softmax score) for the drawing")
    baseline_logit: float = Field(description="the digit's logit for the baseline")
    convergence_delta: float = Field(
        description="sum(attributions) - (logit - baseline_logit); 0 for the exact integral"
    )
    attributions: Annotated[list[AttributionRow], Field(min_length=28, max_length=28)] = Field(
        description=(
            "attributions[row][col]: what that pixel of the 28x28 model input did for the "
            "digit's logit (positive: evidence for it, negative: against it); row 0 is the top"
        )
    )
    model_input_png: str = Field(description="base64 PNG of the 28x28 image the model saw")
    latency_ms: float = Field(ge=0, description="time spent computing the attributions")
