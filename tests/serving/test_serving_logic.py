"""The plain functions behind the runtimes, without servers: the fast preprocessing path equals the
pipeline, exact attributions sum to the margin for both model kinds, and drift encoding keeps missingness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from learning_machine.clients.v2 import encode_request
from learning_machine.data.sources import load_dataset
from learning_machine.model.drift import DriftEncoding
from learning_machine.model.drift_detector import detect, fit_detector
from learning_machine.model.explain import Explainer, source_features
from learning_machine.model.features import feature_frame
from learning_machine.model.inference import Predictor, request_columns
from learning_machine.model.training import train_model


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic-cohort", n_rows=800, seed=7)


@pytest.fixture(scope="module", params=["xgboost", "logistic-regression"])
def trained(request, data):
    params = {"n_estimators": 30} if request.param == "xgboost" else None
    return train_model(data, kind=request.param, params=params, seed=1)


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in frame.to_dict("records")]


def test_the_fast_path_predicts_exactly_like_the_pipeline(data, trained):
    predictor = Predictor.build(trained.pipeline, data.spec, trained.train)
    assert predictor.fast is not None
    records = _records(trained.test)
    records[0]["smoking"] = "vaping"  # an unknown category encodes as all zeros, like handle_unknown="ignore"
    records[1]["bmi"] = None
    records[2]["sex"] = None
    labels, proba = predictor.predict(request_columns(data.spec, encode_request(data.spec, records)["inputs"]))
    frame = pd.DataFrame(records)
    expected = trained.pipeline.predict_proba(feature_frame(data.spec, frame))[:, 1]
    assert np.allclose(proba, expected, atol=1e-7)
    assert (labels == (expected >= 0.5)).all()


def test_exact_attributions_sum_to_the_margin(data, trained):
    explainer = Explainer(trained.pipeline, data.spec, trained.train)
    for record in _records(trained.test.head(10)):
        result = explainer.exact(pd.DataFrame([record]))
        assert abs(result["base_value"] + sum(result["attributions"].values()) - result["margin"]) < 1e-6
        p = trained.pipeline.predict_proba(feature_frame(data.spec, pd.DataFrame([record])))[0, 1]
        assert abs(result["probability"] - p) < 1e-5


def test_transformed_columns_map_back_to_spec_features(data, trained):
    names = list(trained.pipeline.named_steps["preprocess"].get_feature_names_out())
    sources = source_features(data.spec, names)
    assert set(sources) == set(data.spec.feature_names)
    assert sources[names.index("sex_male")] == "sex"


def test_drift_sees_a_missingness_spike(data):
    reference = feature_frame(data.spec, data.frame.head(500))
    detector = fit_detector(data.spec, reference)
    assert "hba1c__missing" in DriftEncoding.fit(data.spec, reference).names
    spiked = load_dataset("synthetic-cohort", n_rows=400, seed=9, scenario="missingness-spike").frame.head(200)
    result = detect(detector, feature_frame(data.spec, spiked))
    assert result["is_drift"] == 1
    assert any(name.endswith("__missing") for name in result["drifted_features"])


def test_the_client_calls_the_explainer_and_drift_detector_where_the_settings_put_them(data):
    """One server for all three by default (the embedded MLServer); Seldon v1 serves each behind its own
    Service. Closed ports show which URL each call went to, and the error names the setting to fix."""
    from testsupport import free_port

    from learning_machine.clients.v2 import ModelServerClient
    from learning_machine.errors import ServiceUnavailableError
    from learning_machine.settings import Settings

    embedded = Settings(model_server_port=free_port())
    with ModelServerClient.from_settings(embedded) as one:
        assert one.url == one.explainer_url == one.drift_url == embedded.model_server_base_url()
    model, explainer, drift = (f"http://127.0.0.1:{free_port()}" for _ in range(3))
    split = Settings(model_server_url=model, explainer_url=f"{explainer}/", drift_detector_url=drift)
    record = _records(data.frame.head(1))[0]
    with ModelServerClient.from_settings(split, timeout_s=2) as client:
        assert (client.url, client.explainer_url, client.drift_url) == (model, explainer, drift)
        for call, url, setting in [(lambda: client.predict("m", data.spec, [record]), model, "LM_MODEL_SERVER_URL"),
                                   (lambda: client.explain("m", data.spec, record), explainer, "LM_EXPLAINER_URL"),
                                   (lambda: client.drift("m", data.spec, [record]), drift, "LM_DRIFT_DETECTOR_URL")]:
            with pytest.raises(ServiceUnavailableError, match=setting) as failed:
                call()
            assert url in failed.value.message
