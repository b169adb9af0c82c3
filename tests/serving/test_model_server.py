"""The model server: a real `mlserver start` with our runtimes, loading the model from a real MLflow server.
Predictions, explanations and drift go through the V2 client; the protocol itself is checked with raw
HTTP requests validated by MLServer's own pydantic types."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from learning_machine.clients.v2 import ModelServerClient, drift_name, explainer_name
from learning_machine.data.sources import load_dataset
from learning_machine.errors import ModelNotFoundError, ServiceUnavailableError
from learning_machine.model.features import feature_frame
from learning_machine.registry.tracker import Tracker


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


def test_exact_attributions_sum_to_the_margin(model_server, client, records):
    pipeline, _ = Tracker(model_server.tracking_uri).load_pipeline(model_server.model_name, model_server.version)
    import pandas as pd

    for record in records[:5]:
        explanation = client.explain(model_server.model_name, model_server.spec, _clean(record), method="exact")
        data = explanation["data"]
        assert explanation["meta"]["name"] == "ExactAttributions"
        assert data["model_version"] == model_server.version
        assert set(data["attributions"]) == set(model_server.spec.feature_names)
        assert abs(sum(data["attributions"].values()) + data["base_value"] - data["margin"]) < 1e-4
        margin = pipeline.predict_proba(feature_frame(model_server.spec, pd.DataFrame([record])))[0, 1]
        assert abs(data["probability"] - margin) < 1e-4  # the margin is the served model's own
        booster_margin = pipeline.named_steps["model"].get_booster().predict(
            __import__("xgboost").DMatrix(pipeline.named_steps["preprocess"].transform(
                feature_frame(model_server.spec, pd.DataFrame([record])))), output_margin=True)[0]
        assert abs(data["margin"] - float(booster_margin)) < 1e-4


def test_anchors_give_a_rule_with_precision_and_coverage(model_server, client, records):
    explanation = client.explain(model_server.model_name, model_server.spec, _clean(records[0]), method="anchors")
    data = explanation["data"]
    assert explanation["meta"]["name"] == "AnchorTabular"
    assert data["anchor"] and all(isinstance(rule, str) for rule in data["anchor"])
    assert 0.0 < data["precision"] <= 1.0 and 0.0 < data["coverage"] <= 1.0
    assert data["prediction"] in (0, 1)


def test_drift_flags_a_shifted_batch_and_not_a_clean_one(model_server, client):
    clean = load_dataset("synthetic-cohort", n_rows=300, seed=21).frame.head(200)
    shifted = load_dataset("synthetic-cohort", n_rows=300, seed=21, scenario="covariate-shift").frame.head(200)
    result = client.drift(model_server.model_name, model_server.spec, [_clean(r) for r in clean.to_dict("records")])
    assert result["is_drift"] is False and result["drifted_features"] == []
    assert len(result["p_val"]) == len(result["feature_names"]) and result["threshold"] < 0.05
    result = client.drift(model_server.model_name, model_server.spec, [_clean(r) for r in shifted.to_dict("records")])
    assert result["is_drift"] is True
    assert "age" in result["drifted_features"]
    assert result["model_version"] == model_server.version


def test_the_server_speaks_v2_to_a_plain_http_client(model_server):
    """Hand-written V2 bodies over raw HTTP, as any Open Inference Protocol client sends them; the answers
    are validated with MLServer's own protocol types."""
    from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse

    name = model_server.model_name
    with httpx.Client(base_url=model_server.url, timeout=30) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        for served in (name, explainer_name(name), drift_name(name)):
            assert http.get(f"/v2/models/{served}/ready").status_code == 200
        meta = MetadataModelResponse.model_validate(http.get(f"/v2/models/{name}").json())
        assert meta.name == name and meta.versions == [model_server.version]
        assert [t.name for t in meta.inputs or []] == model_server.spec.feature_names
        assert {t.name for t in meta.outputs or []} == {"label", "probability"}

        body = {"id": "req-1", "inputs": [
            {"name": "age", "shape": [2], "datatype": "FP64", "data": [71, 45]},
            {"name": "sex", "shape": [2], "datatype": "BYTES", "data": ["male", "female"]},
            {"name": "bmi", "shape": [2], "datatype": "FP64", "data": [31.5, None]},
            {"name": "systolic_bp", "shape": [2], "datatype": "FP64", "data": [165, 118]},
            {"name": "total_cholesterol", "shape": [2], "datatype": "FP64", "data": [6.8, 4.9]},
            {"name": "hdl_cholesterol", "shape": [2], "datatype": "FP64", "data": [0.9, 1.6]},
            {"name": "hba1c", "shape": [2], "datatype": "FP64", "data": [7.9, 5.2]},
            {"name": "smoking", "shape": [2], "datatype": "BYTES", "data": ["current", "never"]},
            {"name": "egfr", "shape": [2], "datatype": "FP64", "data": [55, 98]},
        ]}
        InferenceRequest.model_validate(body)
        answer = http.post(f"/v2/models/{name}/infer", json=body)
        assert answer.status_code == 200, answer.text
        response = InferenceResponse.model_validate(answer.json())
        assert response.id == "req-1" and response.model_name == name
        assert response.model_version == model_server.version
        outputs = {o.name: o for o in response.outputs}
        assert outputs["label"].datatype == "INT64" and outputs["probability"].datatype == "FP64"
        probabilities = list(outputs["probability"].data)
        assert len(probabilities) == 2 and all(0 <= p <= 1 for p in probabilities)
        assert probabilities[0] > probabilities[1]  # the older, hypertensive, diabetic smoker

        # The same rows encoded by MLServer's own pandas codec give the same answer.
        import pandas as pd
        from mlserver.codecs import PandasCodec

        frame = pd.DataFrame({i["name"]: i["data"] for i in body["inputs"]})
        coded = PandasCodec.encode_request(frame, use_bytes=False).model_dump(exclude_none=True)
        again = http.post(f"/v2/models/{name}/infer", json=coded).json()
        assert np.allclose(next(o for o in again["outputs"] if o["name"] == "probability")["data"], probabilities)

        unknown = http.post("/v2/models/no-such-model/infer", json=body)
        assert unknown.status_code == 404


def test_client_errors_name_the_server(model_server, client):
    with pytest.raises(ModelNotFoundError):
        client.predict("no-such-model", model_server.spec, [{"record_id": "x", "age": 50}])
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    with ModelServerClient(down, timeout_s=2) as nowhere:
        with pytest.raises(ServiceUnavailableError) as info:
            nowhere.predict(model_server.model_name, model_server.spec, [{"record_id": "x", "age": 50}])
        assert down in str(info.value)
        with pytest.raises(ServiceUnavailableError):
            nowhere.ready()


def test_mlserver_serves_its_own_prometheus_metrics_where_lm_status_says(model_server, client, records):
    """MLServer's own metrics (requests and latency per served model) on its metrics port: the address the
    model server's service description gives `lm status`, parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    from learning_machine.embedded.model_server import model_server_service

    url = model_server_service(model_server.settings).metrics_url
    assert url == f"http://127.0.0.1:{model_server.settings.model_server_metrics_port}/metrics"

    def successes() -> float:
        text = httpx.get(url, timeout=30).text
        samples = {(s.name, s.labels.get("model")): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        return samples.get(("model_infer_request_success_total", model_server.model_name), 0.0)

    before = successes()
    client.predict(model_server.model_name, model_server.spec, [_clean(r) for r in records[:3]])
    assert successes() == before + 1  # one V2 call for the three records


def test_a_json_log_format_makes_mlservers_own_lines_json(tmp_path, capsys):
    """LM_LOG_FORMAT=json reaches MLServer through its settings.json (`logging_settings`), which MLServer's own
    loader applies: its lines and our runtimes' become one JSON object each."""
    import json
    import logging

    from mlserver.logging import apply_logging_file

    from learning_machine.embedded.model_server import ServerPorts, write_repository

    root = write_repository(tmp_path, model_name="m", ref="champion", tracking_uri="http://127.0.0.1:9",
                            ports=ServerPorts(), log_format="json")
    settings = json.loads((root / "settings.json").read_text())
    assert "logging_settings" not in json.loads(write_repository(
        tmp_path / "text", model_name="m", ref="champion", tracking_uri="http://127.0.0.1:9",
        ports=ServerPorts()).joinpath("settings.json").read_text())
    kept = logging.getLogger().handlers[:], logging.getLogger().level, logging.getLogger("mlserver").handlers[:]
    try:
        apply_logging_file(settings["logging_settings"])
        logging.getLogger("mlserver").info("Loaded model 'm' succesfully.")
        logging.getLogger("learning_machine.serving").warning("a runtime line")
    finally:
        logging.getLogger().handlers[:], logging.getLogger("mlserver").handlers[:] = kept[0], kept[2]
        logging.getLogger().setLevel(kept[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("mlserver", "INFO", "Loaded model 'm' succesfully."), ("learning_machine.serving", "WARNING", "a runtime line")]
