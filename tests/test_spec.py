"""Study-file validation: each bad input names the field and the fix."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_spec_dict
from sweeper.cli import main
from sweeper.errors import SpecError
from sweeper.study.spec import load_spec, parse_spec


def test_defaults_are_the_literature_ranges() -> None:
    spec = parse_spec({"name": "x"})
    s = spec.space
    assert s.dropout_input.bounds() == (0.0, 0.2)
    assert s.dropout_hidden.bounds() == (0.2, 0.5)  # type: ignore[union-attr]
    assert s.weight_decay.bounds() == (1e-6, 1e-2) and s.weight_decay.log
    assert s.momentum.bounds() == (0.9, 0.99)
    assert s.lr_scale.bounds() == (1.0, 100.0)
    assert s.max_norm is not None and s.max_norm.bounds() == (3.0, 5.0)
    assert spec.direction == "maximize" and spec.sampler.type == "tpe"


def test_study_files_in_repo_are_valid() -> None:
    for path in Path(__file__).parents[1].joinpath("studies").glob("*.yaml"):
        assert load_spec(path).name


def test_values_can_be_fixed_ranged_or_off() -> None:
    spec = parse_spec(
        tiny_spec_dict(
            space={
                "momentum": 0.95,
                "weight_decay": "1e-4",
                "max_norm": False,
                "l1": [1e-6, 1e-4],
                "dropout_hidden": [[0.2, 0.3]],
            }
        )
    )
    assert spec.space.momentum.value == 0.95
    assert spec.space.weight_decay.value == 1e-4
    assert spec.space.max_norm is None
    assert spec.space.l1 is not None and spec.space.l1.bounds() == (1e-6, 1e-4)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"space": {"dropout_hidden": [0.2, 1.0]}}, ["dropout_hidden", "[0, 1)"]),
        ({"space": {"dropout_input": 1.5}}, ["dropout_input", "1.5"]),
        ({"space": {"momentum": [0.99, 0.9]}}, ["momentum", "low must be <= high"]),
        ({"space": {"weight_decay": -0.1}}, ["weight_decay", ">= 0"]),
        ({"space": {"weight_decay": [0, 1e-2]}}, ["weight_decay", "low > 0"]),
        ({"train": {"epochs": 0}}, ["train.epochs", "greater than or equal to 1"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "many"]),
        ({"sampler": "bayes"}, ["sampler.type", "bayes"]),
        ({"network": {"hidden": []}}, ["network.hidden", "at least one"]),
        ({"data": {"dataset": "file"}}, ["data", "path"]),
        ({"metric": "val_loss", "direction": "maximize"}, ["minimize"]),
        ({"data": {"dataset": "mnist1d_standard", "num_samples": 100}}, ["num_samples 100", "remove num_samples"]),
        ({"data": {"dataset": "mnist1d_standard", "split": "random"}}, ["'random'", "dataset 'mnist1d'"]),
        ({"data": {"dataset": "mnist1d_standard", "test_fraction": 0.2}}, ["test_fraction 0.2", "remove"]),
        ({"data": {"dataset": "mnist1d", "split": "given"}}, ["no given test split", "mnist1d_standard"]),
        ({"data": {"dataset": "file", "path": "d.csv", "split": "given"}}, ["'d.csv'", "numpy.savez"]),
        ({"data": {"split": "official"}}, ["data.split", "official"]),
        ({"space": {"dropout_hidden": [[0.2, 0.5], [0.2, 0.5]]}}, ["dropout_hidden", "1 in this network", "got 2"]),
        (
            {"network": {"type": "cnn1d", "channels": [8, 8]}, "space": {"dropout_conv": [[0.0, 0.2]] * 3}},
            ["dropout_conv", "2 in this network", "got 3"],
        ),
    ],
)
def test_bad_values_name_the_field(override: dict, words: list[str]) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(tiny_spec_dict(**override))
    for w in words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ({"trails": 5}, "'trials'"),
        ({"space": {"dropout_hiden": [0.2, 0.5]}}, "'dropout_hidden'"),
        ({"train": {"epoch": 3}}, "'epochs'"),
        ({"space": {"momentum": {"low": 0.9, "hi": 0.99}}}, "'high'"),
    ],
)
def test_unknown_keys_get_a_did_you_mean(override: dict, suggestion: str) -> None:
    with pytest.raises(SpecError, match="unknown key") as e:
        parse_spec({**tiny_spec_dict(), **override} if "trails" in override else tiny_spec_dict(**override))
    assert f"did you mean {suggestion}" in str(e.value)


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump(tiny_spec_dict()))
    assert load_spec(good).base_dir == str(tmp_path)


def test_fingerprint_ignores_budget_but_not_space() -> None:
    a = parse_spec(tiny_spec_dict())
    assert a.fingerprint() == parse_spec(tiny_spec_dict(trials=50)).fingerprint()
    assert a.fingerprint() != parse_spec(tiny_spec_dict(space={"momentum": 0.9})).fingerprint()


@pytest.mark.parametrize("content", ["", "# only a comment\n", "\n\n"])
@pytest.mark.parametrize("command", ["launch", "create", "check"])
def test_empty_study_file_is_named_by_the_cli(tmp_path: Path, content: str, command: str) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(content)
    result = CliRunner().invoke(main, [command, str(empty)])
    assert result.exit_code == 2, result.output
    assert f"study file {str(empty)!r} is empty" in result.output and "name: my-study" in result.output
    assert "Traceback" not in result.output and "NoneType" not in result.output
    assert not (tmp_path / "sweeper.db").exists() and not (tmp_path / "mlflow.db").exists()  # nothing was created


def test_standard_mnist1d_split_defaults_and_round_trip() -> None:
    spec = parse_spec(tiny_spec_dict(data={"dataset": "mnist1d_standard"}))
    assert spec.data.split == "given" and spec.data.test_fraction is None and spec.data.num_samples is None
    again = parse_spec(spec.to_dict())  # what a resumed study does with the spec stored in its database
    assert again == spec and again.fingerprint() == spec.fingerprint()
    random = parse_spec(tiny_spec_dict(data={"dataset": "mnist1d"}))
    assert random.data.split == "random" and random.data.test_fraction == 0.15 and random.data.num_samples == 10000
    assert parse_spec(random.to_dict()) == random


def test_empty_list_of_hidden_dropout_ranges_is_refused() -> None:
    with pytest.raises(SpecError, match=r"space.dropout_hidden: give a range like \[0.2, 0.5\]"):
        parse_spec({"name": "x", "space": {"dropout_hidden": []}})


def test_the_readme_study_file_reference_is_a_valid_study_file() -> None:
    """Every key the README documents in its study-file block is one the parser takes."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text[text.index("```yaml\nname: mnist1d-mlp") + len("```yaml\n") :]
    spec = parse_spec(yaml.safe_load(block[: block.index("```")]))
    assert spec.train.early_stopping_patience == 5 and spec.network.channels == (32, 32)
