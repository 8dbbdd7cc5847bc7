"""The hyperparameter table: every knob is a Space field and an Hparams field, and says where its math lives."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import pytest

from sweeper.study.hparams import KNOBS, Hparams
from sweeper.study.space import Space


def _resolve(ref: str) -> Any:
    """``training.x.y`` / ``Hparams.lr`` as the object it names (module attribute, or a class's attribute)."""
    if ref.startswith("Hparams."):
        return getattr(Hparams, ref.split(".", 1)[1])
    parts = ("sweeper." + ref).split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(ref)


@pytest.mark.parametrize("knob", KNOBS, ids=[k.key for k in KNOBS])
def test_each_knob_is_a_field_and_its_math_exists(knob: Any) -> None:
    assert knob.key in Space.model_fields
    fields = {f.name for f in dataclasses.fields(Hparams)}
    assert (knob.key in fields) == (knob.layers is None)  # per-layer rates go to Hparams.dropout
    refs = [r.split(" (")[0].strip() for r in knob.math.replace(" in ", "; ").replace(": ", "; ").split("; ")]
    named = [r for r in refs if r.startswith(("training.", "Hparams."))]
    assert named or knob.math.startswith("torch."), knob.math
    for ref in named:
        assert _resolve(ref) is not None, ref
