"""Job kinds: app.core's three computations, plus any a plugin module registers.

Plugins are the modules named in BABELQ_PLUGINS (comma separated), imported the first
time a kind app.core does not know is looked up; each calls register(). The test
suite's kinds (tests/plugins/testkinds.py) arrive this way, so no production module
names them. Production refuses to start with plugins set (see Settings).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app import core
from app.config import get_settings


@dataclass(frozen=True, slots=True)
class ExtraKind:
    """A registered kind: its params validator and its computation."""

    validate: Callable[[Any], dict[str, Any]]
    run: Callable[[dict[str, Any]], dict[str, Any]]


_EXTRA: dict[str, ExtraKind] = {}
_loaded = False
_load_lock = threading.Lock()


def register(name: str, *, validate: Callable[[Any], dict[str, Any]],
             run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Make a kind beyond app.core's known to submit (validate) and to workers (run)."""
    _EXTRA[name] = ExtraKind(validate, run)


def extra() -> dict[str, ExtraKind]:
    """The registered kinds, after importing the configured plugins once."""
    global _loaded
    if not _loaded:
        with _load_lock:
            if not _loaded:
                for module in get_settings().plugins.split(","):
                    if module.strip():
                        importlib.import_module(module.strip())
                _loaded = True
    return _EXTRA


def extra_kind(kind: str) -> ExtraKind | None:
    """A registered kind app.core does not know, or None."""
    return None if kind in core.KINDS else extra().get(kind)
