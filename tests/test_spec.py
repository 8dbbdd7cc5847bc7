"""Study-file validation: each bad input names the field and the fix."""

from pathlib import Path

import pytest
import yaml

from conftest import tiny_spec_dict
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
