"""The feature set an index declares: which groups, with which parameters.

Feature names are derived from this declaration alone, deterministically, so a
model's metadata can list them and the LTR stage can refuse a model trained on
another feature set before it serves a single query.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeywordFeatures(_Strict):
    fields: list[str] | None = Field(default=None, description="Text fields (default: every text field).")
    k1: float = Field(default=1.2, ge=0)
    b: float = Field(default=0.75, ge=0, le=1)


class RecencyFeatures(_Strict):
    field: str = Field(description="A date field of the index.")
    decay: Literal["gauss", "exp", "linear"] = "exp"
    scale_days: float = Field(default=365.0, gt=0, description="Distance (beyond offset) where the decay reaches `decay_value`.")
    offset_days: float = Field(default=0.0, ge=0, description="No decay within this many days.")
    decay_value: float = Field(default=0.5, gt=0, lt=1)
    missing: float = Field(default=0.0, ge=0, le=1, description="Recency value of a document without a date.")
    now: str | None = Field(default=None, description="Fixed 'now' (ISO date) for reproducible offline evaluation.")


class NumericFeature(_Strict):
    field: str
    log: bool = Field(default=False, description="Use log1p(max(value, 0)).")
    missing: float = 0.0


class PopularityFeatures(_Strict):
    """Per-document click-through rate from the event stream (``cascade behavior consume`` keeps the counts)."""

    half_lives_days: list[float] = Field(
        default_factory=lambda: [1.0, 30.0], max_length=4,
        description="Time windows as half-lives: an impression or click `h` days old counts 1/2 (besides "
                    "all-time counts). Exponential windows are O(1) to update and to read.")
    prior: float = Field(default=20.0, gt=0, description="Beta prior strength, in impressions, around the "
                                                         "index-wide CTR of the window.")

    @field_validator("half_lives_days")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not (h > 0) for h in v):
            raise ValueError("half-lives must be positive numbers of days")
        return v


class PersonalFeatures(_Strict):
    """A user's and a segment's affinity to a keyword field of the documents, from their past clicks."""

    field: str = Field(description="A keyword field of the index (its values are what users have affinity to).")
    segment: str | None = Field(default="segment", description="The user attribute (request `user_attributes`) "
                                                               "naming the user's segment; null: per-user only.")
    half_life_days: float | None = Field(default=30.0, gt=0, description="Older clicks count less (null: never).")
    prior: float = Field(default=5.0, gt=0, description="Prior strength, in clicks, around the index-wide share "
                                                        "of each value.")


class FeatureSetConfig(_Strict):
    version: str = Field(default="1", description="Bump when a feature's meaning changes; models record it.")
    keyword: KeywordFeatures | None = Field(default_factory=KeywordFeatures)
    retrieval: bool = True
    semantic: bool = True
    recency: RecencyFeatures | None = None
    numeric: list[NumericFeature] = Field(default_factory=list)
    query: bool = True
    popularity: PopularityFeatures | None = None
    personal: PersonalFeatures | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v):
        return str(v) if isinstance(v, (int, float)) else v

    def fingerprint(self) -> str:
        # Groups added later are left out while unset, so existing feature sets keep their fingerprint.
        unset = {k for k in ("popularity", "personal") if getattr(self, k) is None}
        blob = json.dumps(self.model_dump(mode="json", exclude=unset), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
