"""The warm interpreter of local pipeline runs: kfp.local's tasks run forked from it, with their own
environment, working directory, streams and exit status; anything else runs the real interpreter."""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kfp import dsl, local

from learning_machine.runners.warm import warm_steps


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def where(tag: str) -> str:
    """What the task sees: its environment, working directory and whether the platform came preloaded."""
    import json
    import os
    import sys

    print(f"task {tag} says hello")
    return json.dumps({"tag": tag, "env": os.environ.get("LM_WARM_TEST", ""), "cwd": os.getcwd(),
                       "preloaded": "learning_machine.registry.runs" in sys.modules, "pid": os.getpid()})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail(message: str) -> str:
    raise ValueError(message)


@dsl.pipeline(name="warm-test")
def two_tasks() -> str:
    first = where(tag="one")
    return where(tag=first.output).output


@dsl.pipeline(name="warm-fail")
def failing() -> str:
    return fail(message="bad input on purpose").output


def test_tasks_run_forked_from_the_warm_interpreter_with_their_own_environment(tmp_path: Path, monkeypatch,
                                                                               capsys):
    import json

    monkeypatch.setenv("LM_WARM_TEST", "from-the-runner")
    monkeypatch.chdir(tmp_path)
    real = sys.executable
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with warm_steps(tmp_path / "warm", dict(os.environ)):
        assert sys.executable != real
        # Anything but a kfp.local task runs the real interpreter, unchanged.
        out = subprocess.run([sys.executable, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == sys.prefix
        result = json.loads(two_tasks().output)
    assert sys.executable == real
    assert result["env"] == "from-the-runner" and result["cwd"] == str(tmp_path)
    assert result["preloaded"] is True and result["pid"] != os.getpid()
    assert json.loads(result["tag"])["tag"] == "one"
    assert "task one says hello" in capsys.readouterr().out  # the task's output reached kfp.local's log


def test_a_failing_task_fails_the_run_with_its_traceback(tmp_path: Path, capsys):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with warm_steps(tmp_path / "warm", dict(os.environ)), pytest.raises(RuntimeError, match="FAILURE"):
        failing()
    assert "ValueError: bad input on purpose" in capsys.readouterr().out


def test_without_the_warm_interpreter_tasks_still_run(tmp_path: Path):
    """The launcher falls back to the real interpreter when nothing answers on the socket."""
    from learning_machine.runners import warm

    folder = tmp_path / "warm"
    with warm_steps(folder, dict(os.environ)):
        launcher = sys.executable
    # After the block the warm interpreter is gone, but a launcher left behind still works.
    out = subprocess.run([launcher, "-m", warm.EXECUTOR, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "KFP Component Executor" in out.stdout


def test_kept_interpreters_serve_the_next_run_until_the_environment_changes(tmp_path: Path, monkeypatch):
    """The local runner's warm interpreters outlive a run: the next run's tasks fork from the same ones
    (its own LM_ settings still reach them), and an environment an import could read starts fresh ones."""
    import json

    from learning_machine.runners import warm

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)

    def run(folder: str) -> tuple[dict, int]:
        with warm_steps(tmp_path / folder, dict(os.environ), keep=True):
            result = json.loads(where(tag=folder).output)
        assert warm._kept is not None and warm._kept.running()
        return result, warm._kept.server.pid

    try:
        monkeypatch.setenv("LM_WARM_TEST", "first")
        first, server = run("one")
        monkeypatch.setenv("LM_WARM_TEST", "second")  # a setting: the same interpreters, the new value
        second, again = run("two")
        assert (first["env"], second["env"]) == ("first", "second") and again == server
        assert second["preloaded"] is True and second["pid"] != first["pid"]
        kept = warm._kept
        monkeypatch.setenv("WARM_TEST_IMPORT_ENV", "changed")  # could change an import: fresh interpreters
        _, fresh = run("three")
        assert fresh != server and kept is not None and not kept.running()
    finally:
        warm.stop_kept()
    assert warm._kept is None


def test_the_local_runner_prepares_the_interpreters_its_next_run_forks_from(tmp_path: Path):
    """The learning loop readies the runner when the policy fires (the retraining often waits for outcomes
    after the change): the local runner then starts the kept interpreters, and a run's tasks fork from them."""
    import json

    from learning_machine.runners import warm
    from learning_machine.runners.local import LocalRunner
    from learning_machine.settings import Settings, settings_env

    settings = Settings(home=tmp_path)
    warm.stop_kept()
    try:
        LocalRunner(settings).prepare()
        prepared = warm._kept
        assert prepared is not None and prepared.running()
        LocalRunner(settings).prepare()  # once ready, ready: the same interpreters
        assert warm._kept is prepared
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=True)
        with warm_steps(tmp_path / "run", {**os.environ, **settings_env(settings)}, keep=True):
            result = json.loads(where(tag="after-prepare").output)
        assert warm._kept is prepared and result["preloaded"] is True
    finally:
        warm.stop_kept()


def test_every_preloaded_module_exists_and_its_warm_up_runs():
    """A preloaded module that an upgrade renamed, or a warm-up whose library changed, would only show as a
    line in warm.log and slower tasks."""
    import importlib
    import importlib.util

    from learning_machine.runners.warm import PRELOAD

    for stage in PRELOAD:
        for entry in stage:
            module, _, function = entry.partition(":")
            assert importlib.util.find_spec(module) is not None, module
            if function:
                getattr(importlib.import_module(module), function)()
