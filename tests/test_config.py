"""Settings: four layers merged in one function, provenance per field, errors that say where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bakeoff.agent.config import ConfigError, Settings, load_settings
from bakeoff.agent.storage import state_dir

EMPTY_ENV = {"HOME": "/nonexistent-home"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_come_from_settings_and_say_so(tmp_path):
    settings, prov = load_settings(tmp_path, EMPTY_ENV, {})
    assert settings == Settings()
    assert prov["n"] == "default" and prov["model.default"] == "default"


def test_bakeoff_toml_then_env_then_flags(tmp_path):
    write(tmp_path / "bakeoff.toml", 'n = 6\nbudget_usd = 0.5\nsandbox = "local"\n[model]\ndefault = "openai/gpt-4o-mini"\neditor = "ed"\n')
    env = {**EMPTY_ENV, "BAKEOFF_N": "8", "BAKEOFF_MODEL_FALLBACKS": "a, b", "BAKEOFF_JUDGE_MODEL": "j"}
    settings, prov = load_settings(tmp_path, env, {"n": 3, "sandbox": None, "model.default": None})
    assert settings.n == 3 and prov["n"] == "flag --n"
    assert settings.budget_usd == 0.5 and prov["budget_usd"] == "bakeoff.toml"
    assert settings.sandbox == "local" and prov["sandbox"] == "bakeoff.toml"  # a None flag is "not given"
    assert settings.model.default == "openai/gpt-4o-mini" and prov["model.default"] == "bakeoff.toml"
    assert settings.model.editor == "ed"
    assert settings.model.fallbacks == ["a", "b"] and prov["model.fallbacks"] == "env BAKEOFF_MODEL_FALLBACKS"
    assert settings.model.judge == "j" and prov["model.judge"] == "env BAKEOFF_JUDGE_MODEL"
    assert settings.model.for_role("judge") == "j" and settings.model.for_role("planner") == "openai/gpt-4o-mini"


def test_pyproject_tool_table_and_model_shorthand(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.bakeoff]\nmodel = "ollama/qwen"\nrounds = 3\n')
    settings, prov = load_settings(tmp_path, EMPTY_ENV, {})
    assert settings.model.default == "ollama/qwen" and settings.rounds == 3
    assert prov["rounds"] == "pyproject.toml [tool.bakeoff]"
    # bakeoff.toml wins over pyproject.toml when both exist
    write(tmp_path / "bakeoff.toml", "rounds = 1\n")
    settings, prov = load_settings(tmp_path, EMPTY_ENV, {})
    assert settings.rounds == 1 and prov["rounds"] == "bakeoff.toml" and settings.model.default is None


def test_user_config_is_below_the_repository(tmp_path):
    home = tmp_path / "cfg"
    user = write(home / "bakeoff" / "config.toml", 'workers = 5\nn = 2\n[model]\ndefault = "u"\n')
    repo = tmp_path / "repo"
    write(repo / "bakeoff.toml", "n = 7\n")
    settings, prov = load_settings(repo, {**EMPTY_ENV, "XDG_CONFIG_HOME": str(home)}, {})
    assert (settings.workers, settings.n, settings.model.default) == (5, 7, "u")
    assert prov["workers"] == str(user) and prov["n"] == "bakeoff.toml"


@pytest.mark.parametrize(
    "layer, expect",
    [
        ("file", ["bakeoff.toml", "n = 0", "edit n in bakeoff.toml"]),
        ("env", ["env BAKEOFF_N", "change or unset BAKEOFF_N"]),
        ("flag", ["flag --n", "pass another value to --n"]),
    ],
)
def test_a_bad_value_names_its_source_the_field_and_the_fix(tmp_path, layer, expect):
    env = dict(EMPTY_ENV)
    flags = {}
    if layer == "file":
        write(tmp_path / "bakeoff.toml", "n = 0\n")
    elif layer == "env":
        env["BAKEOFF_N"] = "many"
    else:
        flags["n"] = 99
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env, flags)
    for text in expect:
        assert text in str(info.value)


def test_unknown_keys_and_typos_are_errors_with_a_suggestion(tmp_path):
    write(tmp_path / "bakeoff.toml", "budget_usdd = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'budget_usd'"):
        load_settings(tmp_path, EMPTY_ENV, {})
    (tmp_path / "bakeoff.toml").write_text('[model]\nplaner = "x"\n')
    with pytest.raises(ConfigError, match="model.planer.*did you mean 'model.planner'"):
        load_settings(tmp_path, EMPTY_ENV, {})
    (tmp_path / "bakeoff.toml").unlink()
    with pytest.raises(ConfigError, match="did you mean BAKEOFF_BUDGET_USD"):
        load_settings(tmp_path, {**EMPTY_ENV, "BAKEOFF_BUGDET_USD": "1"}, {})
    # Variables that are not near a setting's name belong to someone else: ignored.
    settings, _ = load_settings(tmp_path, {**EMPTY_ENV, "BAKEOFF_STATE_DIR": "/x", "BAKEOFF_SOMETHING_ELSE": "1"}, {})
    assert settings.n == Settings().n


def test_broken_toml_says_which_file(tmp_path):
    write(tmp_path / "bakeoff.toml", "n = = 3\n")
    with pytest.raises(ConfigError, match="bakeoff.toml: not valid TOML"):
        load_settings(tmp_path, EMPTY_ENV, {})


def test_none_in_env_clears_a_cap(tmp_path):
    settings, prov = load_settings(tmp_path, {**EMPTY_ENV, "BAKEOFF_BUDGET_USD": "none"}, {})
    assert settings.budget_usd is None and prov["budget_usd"] == "env BAKEOFF_BUDGET_USD"


def test_state_dir_never_inside_the_repo(tmp_path):
    assert state_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "bakeoff"
    assert state_dir({"HOME": "/h"}) == Path("/h/.local/state/bakeoff")
    assert state_dir({"BAKEOFF_STATE_DIR": "/s", "XDG_STATE_HOME": "/t"}) == Path("/s")


def bakeoff(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakeoff", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_bakeoff_config_shows_values_and_where_they_came_from(tmp_path):
    import os

    write(tmp_path / "bakeoff.toml", "n = 6\n[model]\neditor = \"ed\"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKEOFF_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), BAKEOFF_BUDGET_USD="0.25")
    proc = bakeoff("config", "--json", "--repo", str(tmp_path), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["n"] == {"value": 6, "source": "bakeoff.toml"}
    assert doc["model.editor"] == {"value": "ed", "source": "bakeoff.toml"}
    assert doc["budget_usd"] == {"value": 0.25, "source": "env BAKEOFF_BUDGET_USD"}
    assert doc["rounds"]["source"] == "default"
    table = bakeoff("config", "--repo", str(tmp_path), cwd=tmp_path, env={**env, "COLUMNS": "200"})
    assert table.returncode == 0
    assert "bakeoff.toml" in table.stdout and "env BAKEOFF_BUDGET_USD" in table.stdout
    bad = bakeoff("config", "--repo", str(tmp_path), cwd=tmp_path, env={**env, "BAKEOFF_N": "0"})
    assert bad.returncode == 2 and "BAKEOFF_N" in bad.stderr


def test_flags_accept_the_model_shorthand(tmp_path):
    settings, prov = load_settings(tmp_path, EMPTY_ENV, {"model": "ollama/qwen", "n": None})
    assert settings.model.default == "ollama/qwen" and prov["model.default"] == "flag --model"
