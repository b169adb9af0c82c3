"""Dataset specs and record validation: every problem reported at once, never a crash."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from learning_machine.data.sources import builtin_spec
from learning_machine.data.spec import load_spec, parse_spec
from learning_machine.errors import SpecError

SPEC = builtin_spec("synthetic-cohort")
GOOD = {"record_id": "P1", "age": 61.0, "sex": "male", "bmi": 28.4, "systolic_bp": 142.0,
        "total_cholesterol": 5.6, "hdl_cholesterol": 1.1, "hba1c": 6.1, "smoking": "former", "egfr": 78.0}


def test_a_valid_record_has_no_problems():
    assert SPEC.validate_record(GOOD) == []
    assert SPEC.validate_record({**GOOD, "bmi": None, "smoking": None}) == []  # nullable features may be unknown
    assert SPEC.validate_record({**GOOD, "outcome": 1}) == []


def test_every_problem_of_a_record_is_reported_at_once():
    bad = {**GOOD, "age": "sixty", "sex": "other", "systolic_bp": 400, "hba1c": math.inf, "shoe_size": 44}
    del bad["egfr"]
    problems = {p.field: p for p in SPEC.validate_record(bad)}
    assert {f: p.rule for f, p in problems.items()} == {
        "age": "type", "sex": "category", "systolic_bp": "range", "hba1c": "type", "egfr": "required",
        "shoe_size": "unknown-field"}
    assert problems["systolic_bp"].value == 400
    assert "between 70 and 250 mmHg" in problems["systolic_bp"].message
    assert all(p.record_id == "P1" for p in problems.values())


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("age", None, "not-null"), ("age", True, "type"), ("sex", 1, "type"), ("age", 17, "range"),
    ("record_id", None, "required"), ("record_id", [1], "type"), ("outcome", "maybe", "category"),
])
def test_each_rule(field, value, rule):
    problems = SPEC.validate_record({**GOOD, field: value})
    assert [p.rule for p in problems] == [rule]
    assert problems[0].field == field


@pytest.mark.parametrize("record", [
    GOOD, {**GOOD, "bmi": None, "smoking": None}, {**GOOD, "outcome": 1}, {**GOOD, "outcome": False},
    {**GOOD, "record_id": 7}, {**GOOD, "age": 61},
])
def test_the_fast_check_passes_valid_records(record):
    assert SPEC.record_check().valid(record) and SPEC.validate_record(record) == []


@pytest.mark.parametrize(("change", "valid"), [
    ({"age": None}, False), ({"age": True}, False), ({"age": "61"}, False), ({"age": 17}, False),
    ({"age": 10**20}, False), ({"age": math.inf}, False), ({"sex": 1}, False), ({"sex": "other"}, False),
    ({"record_id": None}, False), ({"record_id": [1]}, False), ({"record_id": " P1"}, False),
    ({"record_id": "P\x001"}, False), ({"record_id": ""}, False), ({"record_id": 10**15}, False),
    ({"record_id": True}, False), ({"outcome": "maybe"}, False), ({"shoe_size": 44}, False),
    # Valid, but not the common case: the full check says so.
    ({"bmi": math.nan}, True), ({"record_id": "é-1"}, True), ({"outcome": "1"}, True), ({"outcome": 1.0}, True),
])
def test_the_fast_check_leaves_anything_else_to_the_full_check(change, valid):
    """The fast check never passes a record the full check refuses; False only means "ask the full check"."""
    record = {**GOOD, **change}
    assert not SPEC.record_check().valid(record)
    assert (SPEC.validate_record(record) == []) is valid


def test_the_fast_check_refuses_a_record_without_a_feature_or_not_an_object():
    check = SPEC.record_check()
    assert not check.valid({k: v for k, v in GOOD.items() if k != "egfr"})
    assert not check.valid(["not", "a", "dict"])


def test_a_record_that_is_not_an_object_is_a_problem_not_a_crash():
    assert [p.rule for p in SPEC.validate_record(["not", "a", "dict"])] == ["type"]  # type: ignore[arg-type]


def test_quality_report_counts_missing_out_of_range_and_unseen():
    frame = pd.DataFrame([GOOD, {**GOOD, "record_id": "P2", "age": 130, "smoking": "vaping", "bmi": None},
                          {**GOOD, "record_id": "P2", "egfr": "n/a"}])
    frame["outcome"] = [0, 1, None]
    report = SPEC.quality(frame)
    assert report.n_rows == 3
    assert report.out_of_range == {"age": 1}
    assert report.unseen_categories == {"smoking": {"vaping": 1}}
    assert report.wrong_type == {"egfr": 1}
    assert report.missing["bmi"] == 1
    assert report.duplicate_ids == 1
    assert report.missing_target == 1
    assert report.invalid_cells == 3


def _raw_spec() -> dict:
    return yaml.safe_load(yaml.safe_dump(SPEC.model_dump(mode="json")))


def test_a_missing_spec_field_is_named():
    raw = _raw_spec()
    del raw["features"][0]["description"]
    with pytest.raises(SpecError, match=r"features\[age\]\.description: Field required"):
        parse_spec(raw, source="my.yaml")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r["features"][1].pop("categories"), "categorical feature 'sex' needs 'categories'"),
    (lambda r: r["features"][0].update(range=[90, 10]), "range low 90.0 > high 10.0"),
    (lambda r: r["features"][0].update(unitt="years"), r"features\[age\]\.unitt: Extra inputs"),
    (lambda r: r["subgroups"][0].update(feature="height"), "unknown feature 'height'"),
    (lambda r: r.pop("target"), "target: Field required"),
])
def test_malformed_specs_fail_with_the_reason(mutate, message):
    raw = _raw_spec()
    mutate(raw)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_spec_files_missing_or_not_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_subgroup_labels_band_ages():
    frame = pd.DataFrame({"age": [30, 45, 59.9, 60, 80], "sex": ["female", "male", None, "male", "female"]})
    groups = SPEC.subgroup_labels(frame)
    assert list(groups["age_band"]) == ["<45", "45-59", "45-59", "60-74", "75+"]
    assert list(groups["sex"]) == ["female", "male", None, "male", "female"]
