"""Dataset specs: one YAML file names every feature, its type, unit, valid range or categories and a
one-line clinical description, plus the target and the record id. Records and whole frames are checked
against it; every problem is reported at once (field, value, rule), nothing crashes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from learning_machine.errors import DatasetError, Problem, SpecError, bad_text, encodable

FeatureType = Literal["numeric", "integer", "categorical"]

RECORD_ID_MAX_CHARS = 128
"""A record id is a string of 1 to 128 printable characters without surrounding spaces, or an integer."""
MAX_INTEGER_ID = 10**15 - 1
_LARGEST_NUMBER = 10**15  # an integer feature value beyond this is out of range (float() of huge ones overflows)
"""Integer record ids beyond 15 digits are refused (they do not survive a trip through a float)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Document = TypeVar("_Document", bound=BaseModel)


class FeatureSpec(_Strict):
    """One input feature."""

    name: str
    type: FeatureType
    description: str
    unit: str | None = None
    range: tuple[float, float] | None = None
    categories: tuple[str, ...] | None = None
    nullable: bool = True

    @model_validator(mode="after")
    def _check_kind(self) -> FeatureSpec:
        if self.type == "categorical":
            if not self.categories:
                raise ValueError(f"categorical feature {self.name!r} needs 'categories'")
            if self.range is not None:
                raise ValueError(f"categorical feature {self.name!r} cannot have a 'range'")
        else:
            if self.range is None:
                raise ValueError(f"{self.type} feature {self.name!r} needs a 'range' [low, high]")
            if self.range[0] > self.range[1]:
                raise ValueError(f"feature {self.name!r}: range low {self.range[0]} > high {self.range[1]}")
            if self.categories is not None:
                raise ValueError(f"{self.type} feature {self.name!r} cannot have 'categories'")
        return self


class TargetSpec(_Strict):
    """The binary outcome to predict."""

    name: str
    description: str
    positive_label: str = "1"
    negative_label: str = "0"


class RecordIdSpec(_Strict):
    """The column that identifies a record (a patient encounter)."""

    name: str
    description: str = "record identifier"


class SubgroupSpec(_Strict):
    """A subgroup for per-group metrics: a categorical feature, or a numeric one cut into bands."""

    name: str
    feature: str
    bins: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check_bins(self) -> SubgroupSpec:
        if (self.bins is None) != (self.labels is None):
            raise ValueError(f"subgroup {self.name!r}: give both 'bins' and 'labels' or neither")
        if self.bins is not None and self.labels is not None and len(self.bins) != len(self.labels) + 1:
            raise ValueError(f"subgroup {self.name!r}: {len(self.bins)} bins need {len(self.bins) - 1} labels")
        return self


class DatasetSpec(_Strict):
    """What a dataset holds and what a valid record is."""

    name: str
    description: str
    record_id: RecordIdSpec
    target: TargetSpec
    features: tuple[FeatureSpec, ...]
    subgroups: tuple[SubgroupSpec, ...] = ()
    intended_use: str | None = None

    @model_validator(mode="after")
    def _check_names(self) -> DatasetSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {', '.join(dupes)}")
        for special in (self.record_id.name, self.target.name):
            if special in names:
                raise ValueError(f"{special!r} is both a feature and the record id or target")
        for group in self.subgroups:
            if group.feature not in names:
                raise ValueError(f"subgroup {group.name!r} uses unknown feature {group.feature!r}")
        if not self.features:
            raise ValueError("a dataset needs at least one feature")
        return self

    # ----------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.type != "categorical"]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "categorical"]

    @property
    def columns(self) -> list[str]:
        """Record id, features, target: the column order of a dataset file."""
        return [self.record_id.name, *self.feature_names, self.target.name]

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def record_id_schema(self) -> dict[str, Any]:
        """JSON Schema of a record id (the rule :func:`check_record_id` applies)."""
        return {"description": self.record_id.description, "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": RECORD_ID_MAX_CHARS, "pattern": r"^\S(.*\S)?$"},
            {"type": "integer", "minimum": -MAX_INTEGER_ID, "maximum": MAX_INTEGER_ID}]}

    def record_schema(self) -> dict[str, Any]:
        """JSON Schema (OpenAPI 3.1) of one input record: the id, every feature with its type, unit, range
        or categories, and the optional outcome. The gateway publishes it in its OpenAPI document; the
        records themselves are checked by :meth:`validate_record`, which lists every problem at once."""
        properties: dict[str, Any] = {self.record_id.name: self.record_id_schema()}
        for f in self.features:
            doc = f.description + (f" ({f.unit})" if f.unit else "")
            if f.type == "categorical":
                value: dict[str, Any] = {"type": "string", "enum": list(f.categories or ())}
            else:
                assert f.range is not None
                value = {"type": "integer" if f.type == "integer" else "number",
                         "minimum": f.range[0], "maximum": f.range[1]}
            properties[f.name] = ({"description": doc, "anyOf": [value, {"type": "null"}]} if f.nullable
                                  else {"description": doc, **value})
        properties[self.target.name] = {"description": f"Optional: the outcome, when already known "
                                        f"({self.target.description})", "enum": [0, 1, True, False, "0", "1"]}
        return {"type": "object", "title": f"{self.name} record", "properties": properties,
                "required": [self.record_id.name, *self.feature_names], "additionalProperties": False}

    # ----------------------------------------------------------------------------------------------
    def validate_record(
        self, record: Mapping[str, Any], *, require_target: bool = False, require_id: bool = True
    ) -> list[Problem]:
        """Every problem with one record (an input to predict on); an empty list when it is valid."""
        if not isinstance(record, Mapping):
            return [Problem("<record>", _jsonable(record), "type", "a record must be a JSON object")]
        rid = record.get(self.record_id.name)
        problems: list[Problem] = []
        known = {*self.feature_names, self.record_id.name, self.target.name}
        for key in record:
            if key not in known:
                problems.append(Problem(str(key), _jsonable(record[key]), "unknown-field",
                                        f"{key!r} is not a field of dataset {self.name!r}", rid))
        if self.record_id.name not in record or _is_missing(rid):
            if require_id:
                problems.append(Problem(self.record_id.name, None, "required",
                                        f"the record id {self.record_id.name!r} is required", None))
        else:
            problem = check_record_id(self.record_id.name, rid)
            if problem is not None:
                problems.append(problem)
                rid = None  # not echoed as the record's id: the problem names it already
        for feat in self.features:
            if feat.name not in record:
                problems.append(Problem(feat.name, None, "required", f"{feat.name!r} is missing "
                                        "(send null for an unknown value)" if feat.nullable else
                                        f"{feat.name!r} is required", rid))
                continue
            problems.extend(_check_value(feat, record[feat.name], rid))
        if self.target.name in record and not _is_missing(record[self.target.name]):
            problems.extend(self._check_target(record[self.target.name], rid))
        elif require_target:
            problems.append(Problem(self.target.name, None, "required", f"the outcome {self.target.name!r} is required", rid))
        return problems

    def record_check(self) -> RecordCheck:
        """A fast, conservative check of records against this spec (see :class:`RecordCheck`)."""
        return RecordCheck(self)

    def _check_target(self, value: Any, rid: Any) -> list[Problem]:
        if parse_label(value) is None:
            return [Problem(self.target.name, _jsonable(value), "category",
                            f"the outcome must be 0 or 1 ({self.target.negative_label} or "
                            f"{self.target.positive_label})", rid)]
        return []

    def coerce_frame(self, frame: pd.DataFrame, *, require_target: bool = True) -> pd.DataFrame:
        """The frame with spec columns in order and spec dtypes. Missing columns raise
        :class:`DatasetError`; values that do not parse become missing (``quality`` counts them)."""
        needed = [self.record_id.name, *self.feature_names] + ([self.target.name] if require_target else [])
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DatasetError(
                f"dataset {self.name!r} is missing column(s): {', '.join(missing)}",
                detail={"missing_columns": missing},
            )
        out = pd.DataFrame(index=frame.index)
        out[self.record_id.name] = frame[self.record_id.name].astype(str)
        for feat in self.features:
            col = frame[feat.name]
            if feat.type == "categorical":
                out[feat.name] = col.astype("string").astype(object).where(col.notna(), None)
            else:
                out[feat.name] = pd.to_numeric(col, errors="coerce").astype(float)
        if self.target.name in frame.columns:
            labels = frame[self.target.name].map(parse_label)
            out[self.target.name] = labels.astype("Int64")
        return out.reset_index(drop=True)

    def quality(self, frame: pd.DataFrame) -> DataQualityReport:
        """A data-quality report of a raw frame against this spec."""
        present = [c for c in self.columns if c in frame.columns]
        report = DataQualityReport(dataset=self.name, n_rows=len(frame),
                                   missing_columns=[c for c in self.columns if c not in present],
                                   unknown_columns=[c for c in frame.columns if c not in self.columns])
        for feat in self.features:
            if feat.name not in frame.columns:
                continue
            col = frame[feat.name]
            missing = col.isna()
            report.missing[feat.name] = int(missing.sum())
            if feat.type == "categorical":
                seen = col[~missing].astype(str)
                unseen = seen[~seen.isin(feat.categories or ())]
                if len(unseen):
                    report.unseen_categories[feat.name] = {str(k): int(v) for k, v in unseen.value_counts().items()}
            else:
                values = pd.to_numeric(col, errors="coerce")
                bad_type = values.isna() & ~missing
                if bad_type.any():
                    report.wrong_type[feat.name] = int(bad_type.sum())
                assert feat.range is not None
                low, high = feat.range
                out = (values < low) | (values > high)
                if feat.type == "integer":
                    out |= values.notna() & (values % 1 != 0)
                if out.any():
                    report.out_of_range[feat.name] = int(out.sum())
        if self.record_id.name in frame.columns:
            report.duplicate_ids = int(frame[self.record_id.name].duplicated().sum())
        if self.target.name in frame.columns:
            labels = frame[self.target.name].map(parse_label)
            report.missing_target = int(labels.isna().sum())
            report.positive_rate = float(labels.dropna().mean()) if labels.notna().any() else None
        return report

    def subgroup_labels(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        """For each subgroup, a label per row (missing where the feature is missing)."""
        groups: dict[str, pd.Series] = {}
        for group in self.subgroups:
            col = frame[group.feature]
            if group.bins is None:
                groups[group.name] = col.astype(object).where(col.notna(), None)
            else:
                cut = pd.cut(pd.to_numeric(col, errors="coerce"), bins=list(group.bins),
                             labels=list(group.labels or ()), right=False)
                groups[group.name] = cut.astype(object).where(cut.notna(), None)
        return groups


@dataclass
class DataQualityReport:
    """Counts of what is wrong with a frame, per feature."""

    dataset: str
    n_rows: int
    missing_columns: list[str] = field(default_factory=list)
    unknown_columns: list[str] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    wrong_type: dict[str, int] = field(default_factory=dict)
    unseen_categories: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicate_ids: int = 0
    missing_target: int = 0
    positive_rate: float | None = None

    @property
    def invalid_cells(self) -> int:
        """Cells that break the spec (out of range, wrong type, unseen category)."""
        return (sum(self.out_of_range.values()) + sum(self.wrong_type.values())
                + sum(sum(v.values()) for v in self.unseen_categories.values()))

    @property
    def missing_fraction(self) -> float:
        """Fraction of feature cells that are missing."""
        cells = self.n_rows * max(len(self.missing), 1)
        return sum(self.missing.values()) / cells if cells else 0.0

    @property
    def invalid_fraction(self) -> float:
        cells = self.n_rows * max(len(self.missing), 1)
        return self.invalid_cells / cells if cells else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "n_rows": self.n_rows, "missing_columns": self.missing_columns,
            "unknown_columns": self.unknown_columns, "missing": self.missing,
            "out_of_range": self.out_of_range, "wrong_type": self.wrong_type,
            "unseen_categories": self.unseen_categories, "duplicate_ids": self.duplicate_ids,
            "missing_target": self.missing_target, "positive_rate": self.positive_rate,
            "missing_fraction": self.missing_fraction, "invalid_fraction": self.invalid_fraction,
        }


# --------------------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _jsonable(value: Any) -> Any:
    return encodable(value)


class RecordCheck:
    """The common case of :meth:`DatasetSpec.validate_record`, compiled once per spec: :meth:`valid` is True
    only for a record that the full check accepts (a JSON object with a sane id, every feature present and of
    its type, in range or among its categories, an outcome spelled as 0/1 if any). False means "not sure":
    the caller runs :meth:`DatasetSpec.validate_record`, which names every problem. So the answers never
    differ; this only skips the per-field Problem machinery on the hot path (the gateway's batches)."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.id_field = spec.record_id.name
        self.target = spec.target.name
        self.required = frozenset([self.id_field, *spec.feature_names])
        self.allowed = frozenset([*self.required, self.target])
        # (name, nullable, categories or None, low, high, whole numbers only)
        self.fields = [(f.name, f.nullable, frozenset(f.categories or ()) if f.type == "categorical" else None,
                        *(f.range or (0.0, 0.0)), f.type == "integer") for f in spec.features]

    def valid(self, record: Any) -> bool:
        if type(record) is not dict:
            return False
        keys = record.keys()
        if not (self.required <= keys and keys <= self.allowed):
            return False
        rid = record[self.id_field]
        if type(rid) is str:
            if not (0 < len(rid) <= RECORD_ID_MAX_CHARS and rid.isascii() and rid.isprintable()
                    and rid[0] != " " and rid[-1] != " "):
                return False
        elif type(rid) is not int or not -MAX_INTEGER_ID <= rid <= MAX_INTEGER_ID:
            return False
        for name, nullable, categories, low, high, whole in self.fields:
            value = record[name]
            if value is None:
                if not nullable:
                    return False
            elif categories is not None:
                if type(value) is not str or value not in categories:
                    return False
            elif type(value) is int:
                if not (low <= value <= high and -_LARGEST_NUMBER <= value <= _LARGEST_NUMBER):
                    return False
            elif type(value) is float:
                # NaN fails the comparison: the full check decides (a missing value where nullable).
                if not (low <= value <= high and math.isfinite(value)) or (whole and not value.is_integer()):
                    return False
            else:
                return False
        if self.target in record:
            value = record[self.target]
            return value is None or (value in (0, 1) and type(value) in (int, bool))
        return True


def check_record_id(field_name: str, value: Any) -> Problem | None:
    """The one rule for record ids, wherever one arrives (a record, an outcome, an explanation request):
    a string of 1 to 128 printable characters without surrounding spaces, or an integer of at most 15
    digits. Every table stores ids as text, so 7 and "7" name the same record."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Problem(field_name, _jsonable(value), "type", "the record id must be a string or an integer")
    if isinstance(value, int):
        if abs(value) > MAX_INTEGER_ID:
            return Problem(field_name, _jsonable(value), "range",
                           "an integer record id may have at most 15 digits; send longer ids as strings")
        return None
    if not value or len(value) > RECORD_ID_MAX_CHARS:
        return Problem(field_name, _jsonable(value), "length",
                       f"the record id must have 1 to {RECORD_ID_MAX_CHARS} characters (it has {len(value):,})")
    why = bad_text(value)
    if why is not None or not value.isprintable():
        return Problem(field_name, _jsonable(value), "characters",
                       f"the record id {why or 'contains a character that is not printable'}")
    if value != value.strip():
        return Problem(field_name, _jsonable(value), "characters", "the record id may not start or end with a space")
    return None


def parse_label(value: Any) -> int | None:
    """0 or 1 from the usual spellings of a binary outcome, None for anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "0.0", "1.0", "true", "false"):
        return int(value.strip().lower() in ("1", "1.0", "true"))
    return None


def _check_value(feat: FeatureSpec, value: Any, rid: Any) -> list[Problem]:
    if _is_missing(value):
        if feat.nullable:
            return []
        return [Problem(feat.name, None, "not-null", f"{feat.name!r} may not be null", rid)]
    if feat.type == "categorical":
        if not isinstance(value, str):
            return [Problem(feat.name, _jsonable(value), "type", f"{feat.name!r} must be a string, one of "
                            f"{', '.join(feat.categories or ())}", rid)]
        if value not in (feat.categories or ()):
            return [Problem(feat.name, value, "category", f"{feat.name!r} must be one of "
                            f"{', '.join(feat.categories or ())}", rid)]
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return [Problem(feat.name, _jsonable(value), "type", f"{feat.name!r} must be a number", rid)]
    if isinstance(value, int) and abs(value) > _LARGEST_NUMBER:  # float() of a 400-digit integer overflows
        return [Problem(feat.name, _jsonable(value), "range", f"{feat.name!r} must be between "
                        f"{feat.range[0]:g} and {feat.range[1]:g}" if feat.range else f"{feat.name!r} is too large",
                        rid)]
    number = float(value)
    if not math.isfinite(number):
        return [Problem(feat.name, _jsonable(value), "type", f"{feat.name!r} must be a finite number", rid)]
    if feat.type == "integer" and not number.is_integer():
        return [Problem(feat.name, _jsonable(value), "type", f"{feat.name!r} must be a whole number", rid)]
    assert feat.range is not None
    low, high = feat.range
    if not low <= number <= high:
        unit = f" {feat.unit}" if feat.unit else ""
        return [Problem(feat.name, _jsonable(value), "range",
                        f"{feat.name!r} must be between {low:g} and {high:g}{unit}", rid)]
    return []


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a spec file; a malformed one raises :class:`SpecError` naming every bad field."""
    _, raw = read_yaml(path, "dataset spec")
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, *, source: str = "<spec>") -> DatasetSpec:
    """Build a spec from parsed YAML/JSON; errors name the file and each bad field."""
    return validate_document(DatasetSpec, raw, "dataset spec", source)


def read_yaml(path: str | Path, what: str) -> tuple[str, Any]:
    """The text of a YAML file (a dataset spec, a change-control plan) and what it parses to; a missing file
    or one that is not YAML raises :class:`SpecError` naming ``what`` and the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SpecError(f"{what} file {str(path)!r} does not exist") from exc
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{what} {str(path)!r} is not valid YAML: {exc}") from exc


def validate_document(model: type[_Document], raw: Any, what: str, source: str) -> _Document:
    """``raw`` (a parsed YAML/JSON document) as ``model``; anything else raises :class:`SpecError` naming
    ``what``, the source and every bad field (list entries by their ``name`` where they have one)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{what} {source!r} must be a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(_loc_name(raw, err["loc"]))
            problems.append({"field": where or "<document>", "problem": err["msg"]})
        listed = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        raise SpecError(f"{what} {source!r} is invalid: {listed}", detail=problems) from exc


def _loc_name(raw: Any, loc: Sequence[int | str]) -> list[str]:
    """A readable path: features[3] becomes features[age] when the entry has a name."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            entry = node[item]
            label = entry.get("name") if isinstance(entry, Mapping) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{label or item}]"]
            node = entry
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return parts
