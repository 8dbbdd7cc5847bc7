"""make_storage: the arguments it is given are checked as what they are, not blamed on the URL."""

from __future__ import annotations

from typing import Any

import pytest

from sweeper.errors import StudyError
from sweeper.study.storage import make_storage


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"heartbeat_interval": -1}, "heartbeat_interval must be a positive whole number of seconds, but got -1"),
        ({"heartbeat_interval": 0}, "heartbeat_interval must be a positive whole number of seconds, but got 0"),
        ({"heartbeat_interval": 1, "grace_period": -3}, "grace_period must be a positive whole number"),
        ({"grace_period": 5}, "grace_period (5 s) needs a heartbeat_interval"),
    ],
)
def test_bad_heartbeat_settings_are_named_not_blamed_on_the_url(tmp_path: Any, kwargs: dict, words: str) -> None:
    with pytest.raises(StudyError) as e:
        make_storage(f"sqlite:///{tmp_path}/study.db", **kwargs)
    assert words in str(e.value) and "URL" not in str(e.value)


def test_heartbeat_settings_reach_optuna(tmp_path: Any) -> None:
    st = make_storage(f"sqlite:///{tmp_path}/study.db", heartbeat_interval=2, grace_period=7)
    assert (st.heartbeat_interval, st.grace_period) == (2, 7)
    assert make_storage(f"sqlite:///{tmp_path}/study.db", heartbeat_interval=2).grace_period == 6


def test_a_bad_url_is_still_blamed_on_the_url() -> None:
    with pytest.raises(StudyError, match="invalid study database URL"):
        make_storage("nosuchdb://x/y")


def test_every_storage_method_of_optuna_is_retried() -> None:
    """``retry.RETRIED`` lists Optuna's storage API by hand: a method a new Optuna adds must not go unretried."""
    import optuna

    from sweeper.study.retry import RETRIED

    written_out = {"create_new_trial", "set_trial_state_values"}
    api = {n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
    assert api - written_out == set(RETRIED), "add Optuna's new storage methods to sweeper.study.retry.RETRIED"
