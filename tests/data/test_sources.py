"""Dataset sources: built-in names, bring-your-own CSV with a spec, and clear errors."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from learning_machine.data.sources import SOURCES, load_dataset
from learning_machine.errors import DatasetError, SpecError, UnknownNameError


def test_builtin_datasets_match_their_specs():
    for name in SOURCES:
        data = load_dataset(name, n_rows=300, seed=1)
        assert list(data.frame.columns) == data.spec.columns
        report = data.spec.quality(data.frame)
        assert report.invalid_cells == 0 and not report.missing_columns
        assert set(data.frame[data.spec.target.name].unique()) == {0, 1}


def test_breast_cancer_predicts_malignant_as_the_positive_class():
    data = load_dataset("breast-cancer")
    assert len(data.frame) == 569
    assert data.frame["outcome"].sum() == 212  # 212 malignant, 357 benign in the Wisconsin data
    assert data.spec.target.positive_label == "malignant"


def test_the_digest_identifies_the_rows():
    a = load_dataset("synthetic-cohort", n_rows=500, seed=1)
    b = load_dataset("synthetic-cohort", n_rows=500, seed=1)
    c = load_dataset("synthetic-cohort", n_rows=500, seed=2)
    assert a.digest == b.digest != c.digest


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match="unknown dataset 'mimic'; valid datasets are: breast-cancer, "
                                               "synthetic-cohort"):
        load_dataset("mimic")


def test_bring_your_own_csv_with_a_spec(tmp_path):
    spec = {"name": "chest-pain", "description": "Adults with chest pain.",
            "record_id": {"name": "encounter"}, "target": {"name": "readmitted", "description": "30-day readmission"},
            "features": [
                {"name": "age", "type": "numeric", "unit": "years", "range": [18, 110], "description": "Age."},
                {"name": "sex", "type": "categorical", "categories": ["female", "male"], "description": "Sex."}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    pd.DataFrame({"encounter": [f"E{i}" for i in range(40)], "age": range(40, 80), "sex": ["female", "male"] * 20,
                  "readmitted": [0, 1] * 20}).to_csv(tmp_path / "data.csv", index=False)
    data = load_dataset(str(tmp_path / "data.csv"), spec_path=tmp_path / "spec.yaml")
    assert data.name == "chest-pain" and len(data.frame) == 40
    assert data.source_uri.startswith("file://")


def test_csv_problems_are_clear(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "x", "description": "x", "record_id": {"name": "id"},
                                         "target": {"name": "y", "description": "y"},
                                         "features": [{"name": "a", "type": "numeric", "range": [0, 1],
                                                       "description": "a"}]}))
    (tmp_path / "missing_col.csv").write_text("id,y\n1,0\n")
    with pytest.raises(DatasetError, match="missing column\\(s\\): a"):
        load_dataset(str(tmp_path / "missing_col.csv"), spec_path=spec_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.csv"), spec_path=spec_path)
    with pytest.raises(DatasetError, match="give its spec with --spec"):
        load_dataset(str(tmp_path / "missing_col.csv"))
    with pytest.raises(SpecError, match="does not exist"):
        load_dataset(str(tmp_path / "missing_col.csv"), spec_path=tmp_path / "nope.yaml")
