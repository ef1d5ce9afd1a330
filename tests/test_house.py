"""Issue 12, the house: clouds are packages behind the provider registry (:mod:`cordon.providers`).

The registry holds the three built-in providers, each declaring its record sources, actions and
client factory; the pipeline, the client factory and the action loader ask it. And a ratchet on the
rest of the core: outside ``cordon/providers/<cloud>/`` (and the sandbox plug-in) no module names a
cloud in its code (comments and docstrings may).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from cordon.action import all_actions
from cordon.providers import Provider, Source, all_sources, get_provider, provider_names, providers

REPO = Path(__file__).resolve().parents[1]
CLOUD = re.compile(r"(?i)(?<![a-z])(aws|gcp|azure|entra|cloudtrail|guardduty|securityhub)(?![a-z])")

#: module -> how many code tokens still name a cloud. Empty since the redesign finished: a module
#: outside ``cordon/providers/<cloud>/`` (and the sandbox plug-in) that names a cloud is a failure.
STILL_NAMING_A_CLOUD: dict[str, int] = {}


def _code_tokens(path: Path) -> list[tuple[int, str]]:
    src = path.read_text(encoding="utf-8")
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docs.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(src).readline)
            if tok.type in (tokenize.NAME, tokenize.STRING) and tok.start[0] not in docs]


def _naming_a_cloud() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for path in sorted((REPO / "cordon").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("cordon/sandbox/", *(f"cordon/providers/{p}/" for p in provider_names()))):
            continue
        # the Microsoft Teams integration (one package: its card, bot endpoint and directory): its
        # users live in Entra ID, read through the Azure provider's Graph client; the core sees only
        # a channel ("teams") and a directory group ("<directory>:<id>")
        if rel.startswith("cordon/teams/"):
            continue
        if rel == "cordon/providers/__init__.py":  # the registry's one line per built-in provider
            continue
        hits = [(ln, s) for ln, s in _code_tokens(path) if CLOUD.search(s)]
        if hits:
            found[rel] = hits
    return found


def test_the_registry_holds_the_three_clouds_each_complete():
    assert provider_names() == ("aws", "azure", "gcp", "kubernetes")
    actions = all_actions()
    for name, provider in providers().items():
        assert isinstance(provider, Provider) and provider.name == name and provider.title
        assert provider.sources and all(isinstance(s, Source) for s in provider.sources)
        mine = [a for a in actions if a.startswith(f"{name}.")]
        assert mine, name
        assert all(actions[a].__module__ == provider.actions_module for a in mine), name
        assert callable(provider.clients)
    kinds = [s.kind for p in providers().values() for s in p.sources]
    assert len(kinds) == len(set(kinds)) == len(all_sources())


def test_an_unknown_provider_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match=r"no provider 'okta' \(registered: aws, azure, gcp, kubernetes\)"):
        get_provider("okta")


def test_no_other_core_module_starts_naming_a_cloud():
    found = _naming_a_cloud()
    new = {m: hits[:5] for m, hits in found.items() if m not in STILL_NAMING_A_CLOUD}
    assert not new, f"modules outside cordon/providers/<cloud>/ that name a cloud: {new}"
    grown = {m: (len(hits), STILL_NAMING_A_CLOUD[m]) for m, hits in found.items()
             if len(hits) > STILL_NAMING_A_CLOUD[m]}
    assert not grown, f"name a cloud more often than before (now, allowed): {grown}"
    print("still naming a cloud:", {m: len(h) for m, h in found.items()})


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_the_sandbox_is_a_plug_in_imported_by_nothing_in_the_core():
    """The stand-ins reach the core only through the entry points of :mod:`cordon.standins`."""
    importers = {path.relative_to(REPO).as_posix() for path in (REPO / "cordon").rglob("*.py")
                 if not path.relative_to(REPO).as_posix().startswith("cordon/sandbox/")
                 and any(m == "cordon.sandbox" or m.startswith("cordon.sandbox.") for m in _imports(path))}
    assert not importers, f"core modules importing the sandbox: {sorted(importers)}"
    assert "moto" not in (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]


def test_the_stand_ins_are_found_by_entry_point_and_their_clients_are_typed():
    from cordon.clouds import ClientFactory, Clients
    from cordon.standins import StandIns, StandInsMissing

    stand_ins = StandIns().check()
    assert set(stand_ins._registered()) == set(provider_names())
    with pytest.raises(StandInsMissing, match="no stand-in for provider 'okta'"):
        stand_ins.for_provider("okta")
    for name in provider_names():
        factory = get_provider(name).clients  # the provider's own factory function
        assert callable(factory)
    aws = stand_ins.for_provider("aws")
    try:
        from cordon.clouds import clients_for

        clients = clients_for("aws", aws.cloud_params())
        assert isinstance(clients, ClientFactory) and isinstance(clients, Clients)
        assert clients.own_identity().startswith("arn:aws:") and clients.own_access_key()
    finally:
        stand_ins.stop()


def _runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (module level or inside functions), without the
    ``if TYPE_CHECKING:`` blocks (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _module_graph() -> dict[str, set[str]]:
    paths = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / "cordon").rglob("*.py")}
    return {m: {x for x in _runtime_imports(p) if x in paths and x != m} for m, p in paths.items()}


def test_no_import_cycles_and_nothing_in_the_core_climbs_up_to_the_flows():
    graph = _module_graph()
    # a cycle is a module that reaches itself (Tarjan would name them all; one witness is enough)
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            mod = todo.pop()
            assert mod != start, f"import cycle through {start}"
            if mod not in seen:
                seen.add(mod)
                todo.extend(graph[mod])
    top = ("cordon.cli", "cordon.flows", "cordon.sandbox")  # the layers above the core, and the plug-in
    climbing = {m: sorted(x for x in deps if x.startswith("cordon.flows"))
                for m, deps in graph.items() if not m.startswith(top)}
    assert not {m: d for m, d in climbing.items() if d}, "core modules importing cordon.flows"
