"""The CLI in-process with click's CliRunner: exit codes and messages."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_spec_dict
from sweeper.cli import main


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_spec_dict(trials=2)))
    return p


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_launch_status_best(study_file: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/s.db"
    result = run("launch", str(study_file), "--storage", db, "--tracking-uri", "")
    assert result.exit_code == 0, result.output
    assert "tiny: " in result.output and "best value" in result.output and "test accuracy" in result.output

    result = run("status", "--storage", db)
    assert result.exit_code == 0, result.output
    assert "budget 2" in result.output

    result = run("best", "tiny", "--storage", db, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert "dropout.input" in out["params"] and 0 < out["test"]["test_accuracy"] <= 1
    assert out["models"] == {} and out["run_id"] is None  # tracking off: no MLflow run, no model to load


def test_defaults_are_sqlite_files_in_the_working_directory(study_file: Path, tmp_path: Path) -> None:
    result = run("launch", str(study_file), "--trials", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweeper.db").exists() and (tmp_path / "mlflow.db").exists()
    assert run("status").exit_code == 0


def test_storage_from_environment(study_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_STORAGE", f"sqlite:///{tmp_path}/env.db")
    result = run("launch", str(study_file), "--trials", "1", "--tracking-uri", "")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env.db").exists() and not (tmp_path / "sweeper.db").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"space": {"dropout_hidden": [0.2, 1.2]}}, ["space.dropout_hidden", "[0, 1)"]),
        ({"space": {"momentum": [0.99, 0.9]}}, ["momentum", "low must be <= high"]),
        ({"space": {"weight_decay": -1}}, ["weight_decay"]),
        ({"netwrk": {"hidden": [8]}}, ["unknown key 'netwrk'", "did you mean 'network'"]),
    ],
)
def test_bad_study_file_exits_2_without_traceback(tmp_path: Path, content: dict, words: list[str]) -> None:
    p = tmp_path / "bad.yaml"
    d = tiny_spec_dict()
    for k, v in content.items():
        d[k] = {**d.get(k, {}), **v}
    p.write_text(yaml.safe_dump(d))
    result = CliRunner().invoke(main, ["launch", str(p)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for w in words:
        assert w in result.output
    assert not (tmp_path / "sweeper.db").exists()  # rejected before anything ran


def test_missing_file_and_unknown_study(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["launch", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["worker", "ghost", "--storage", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 2 and "no study named 'ghost'" in result.output
    result = CliRunner().invoke(main, ["launch", str(tmp_path / "none.yaml"), "--trials", "0"])
    assert result.exit_code == 2


def test_password_never_in_messages(study_file: Path) -> None:
    result = CliRunner().invoke(
        main, ["worker", "ghost", "--storage", "postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/test"]
    )
    assert result.exit_code == 2, result.output
    assert "s3cret" not in result.output and "***" in result.output


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgresql://nobody:s3cret@127.0.0.1:5432/test", ["cannot open the study database", "nobody"]),
        ("postgresql://sweeper:s3cret@127.0.0.1:1/test", ["cannot open the study database", "refused"]),
        ("sqlite:////no/such/folder/s3cret.db", ["cannot open the study database", "folder exists"]),
        ("not-a-url", ["invalid study database URL", "sqlite:///sweeper.db"]),
        ("mysql://root:s3cret@127.0.0.1/test", ["no database driver installed", "mysql"]),
    ],
)
def test_unusable_storage_is_named_without_its_password(url: str, words: list[str]) -> None:
    """A real connection attempt to each bad URL: one message naming it, exit 2, no traceback."""
    for command in (["status"], ["best", "some-study"]):
        result = CliRunner().invoke(main, [*command, "--storage", url])
        assert result.exit_code == 2, result.output
        assert all(w in result.output for w in words), result.output
        assert "Traceback" not in result.output
        if "s3cret@" in url:
            assert "s3cret" not in result.output and "***" in result.output


@pytest.mark.parametrize("uri", ["foo://x", "mlruns"])
def test_unsupported_tracking_uri_exits_2(study_file: Path, uri: str) -> None:
    result = CliRunner().invoke(main, ["launch", str(study_file), "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert f"unsupported MLflow tracking URI '{uri}'" in result.output and "sqlite:///mlflow.db" in result.output


def test_check_verdicts(study_file: Path, tmp_path: Path) -> None:
    result = run("check", str(study_file), "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PASS")  # the verdict on stdout; per-epoch progress on stderr
    assert "epoch 3/3: training loss" in result.stderr
    # a learning rate far too high: the check must catch it before a sweep is run
    hot = tmp_path / "hot.yaml"
    hot.write_text(yaml.safe_dump(tiny_spec_dict(train={"base_lr": 1e4})))
    result = CliRunner().invoke(main, ["check", str(hot), "--epochs", "3"])
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("FAIL")


def test_create_then_worker(study_file: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/s.db"
    result = run("create", str(study_file), "--storage", db, "--tracking-uri", "", "--trials", "1")
    assert result.exit_code == 0, result.output
    from sweeper import api

    rep = api.report("tiny", storage=db)
    assert rep.budget == 1 and sum(rep.counts.values()) == 0
    result = run("worker", "tiny", "--storage", db, "--tracking-uri", "", "--no-progress")
    assert result.exit_code == 0, result.output
    assert api.report("tiny", storage=db).counts["complete"] + api.report("tiny", storage=db).counts["pruned"] == 1
