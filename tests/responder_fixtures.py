"""The in-process responder fixture (imported by test modules with
``from tests.responder_fixtures import responder``): a :class:`cordon.engine.Responder` on a fresh
SQLite ledger (``CORDON_DATABASE_URL`` pointed at it, so the flow's tasks use the same one), its flows
run against Prefect's test server (``prefect_server``, ``tests/conftest.py``)."""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["responder"]


@pytest.fixture
def responder(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, prefect_server: None) -> Any:
    """A Responder whose ledger is ``tmp_path/ledger.db``."""
    from cordon.audit.ledger import Ledger
    from cordon.engine import Responder

    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    return Responder(ledger=Ledger(url))
