"""`lm tokens import`: tokens made elsewhere (the Helm chart's monitor token, role `monitor`) become valid,
idempotently; a token already registered with another role is refused, not silently kept."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from learning_machine.cli.app import app
from learning_machine.errors import ConfigurationError
from learning_machine.store.db import Database
from learning_machine.store.tokens import authenticate, register_tokens


def test_registered_tokens_authenticate_and_a_second_import_changes_nothing(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'lm.db'}")
    db.upgrade()
    token = "lm_" + "x" * 43
    assert register_tokens(db, {"data-scientist": token}) == ["data-scientist"]
    assert register_tokens(db, {"data-scientist": token}) == []
    assert authenticate(db, token).role == "data-scientist"
    with pytest.raises(ConfigurationError):
        register_tokens(db, {"admin": "short"})
    with pytest.raises(ConfigurationError, match="already registered with role 'data-scientist'"):
        register_tokens(db, {"monitor": token})
    assert authenticate(db, token).role == "data-scientist"


def test_the_command_reads_the_tokens_file(tmp_path, monkeypatch):
    token = "lm_" + "y" * 43
    (tmp_path / "tokens.json").write_text(json.dumps({"monitor": token}))  # what the Helm chart's Secret holds
    monkeypatch.setenv("LM_DATABASE_URL", f"sqlite:///{tmp_path / 'lm.db'}")
    monkeypatch.setenv("LM_TOKENS_FILE", str(tmp_path / "tokens.json"))
    monkeypatch.setenv("LM_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["tokens", "import"])
    assert result.exit_code == 0, result.output
    assert "monitor" in result.output
    assert "already" in CliRunner().invoke(app, ["tokens", "import"]).output
    db = Database(f"sqlite:///{tmp_path / 'lm.db'}")
    assert authenticate(db, token).role == "monitor"
