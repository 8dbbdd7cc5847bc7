"""Load a user's function from ``file.py:name`` or ``package.module:name``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeper.errors import SpecError


def load_callable(ref: str, base_dir: str, field: str) -> Callable[..., Any]:
    """Resolve ``ref``; a relative file path is taken from the study file's folder."""
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise SpecError(f"{field} must look like 'my_file.py:function' or 'package.module:function', but got {ref!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise SpecError(f"{field}: file {str(path)!r} does not exist (paths are relative to the study file)")
        mod_name = f"sweeper_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise SpecError(f"{field}: cannot import module {target!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SpecError(f"{field}: {target!r} has no function {name!r}")
    return fn
