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
    """A Responder whose ledger is ``tmp_path/ledger.db``, on the shipped configuration with
    ``actor_access: false`` (``tests.helpers.one_credential``: the modules using this fixture are
    about one kind of credential; ``CORDON_CONFIG`` points at it, so the flow's tasks read it too)."""
    from cordon.audit.ledger import Ledger
    from cordon.config import load_config
    from cordon.engine import Responder
    from tests.helpers import one_credential_config

    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    folder = one_credential_config(tmp_path / "one-credential-config")
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return Responder(config=load_config(folder), ledger=Ledger(url))
