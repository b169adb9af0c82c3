"""The model server: a real `mlserver start` with our runtimes, loading the model from a real MLflow server.
Predictions, explanations and drift go through the V2 client; the protocol itself is checked with raw
HTTP requests validated by MLServer's own pydantic types."""

from __future__ import annotations

import numpy as np
import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.features import feature_frame
from learning_machine.tracking import Tracker
from learning_machine.v2 import ModelServerClient


@pytest.fixture(scope="module")
def client(model_server):
    with ModelServerClient(model_server.url) as c:
        yield c


@pytest.fixture(scope="module")
def records():
    data = load_dataset("synthetic-cohort", n_rows=300, seed=11)
    return data.frame.to_dict("records")


def _clean(record: dict) -> dict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items() if k != "outcome"}


def test_predictions_match_the_registered_pipeline(model_server, client, records):
    batch = [_clean(r) for r in records[:50]]
    predictions = client.predict(model_server.model_name, model_server.spec, batch)
    assert [p.record_id for p in predictions] == [r["record_id"] for r in batch]
    assert {p.model_version for p in predictions} == {model_server.version}
    pipeline, _ = Tracker(model_server.tracking_uri).load_pipeline(model_server.model_name, model_server.version)
    import pandas as pd

    expected = pipeline.predict_proba(feature_frame(model_server.spec, pd.DataFrame(records[:50])))[:, 1]
    got = np.array([p.probability for p in predictions])
    assert np.allclose(got, expected, atol=1e-9)
    assert [p.label for p in predictions] == [int(p >= 0.5) for p in expected]
