"""The generated documents are current, and every request an adapter sends is in its table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gpushopper import docgen
from gpushopper.providers import tensordock, vastai


@pytest.mark.parametrize("name", sorted(docgen.DOCUMENTS))
def test_document_is_current(name):
    assert (docgen.DOCS / name).read_text(encoding="utf-8") == docgen.DOCUMENTS[name](), (
        f"docs/{name} is stale: run scripts/gen-docs"
    )


def _path_of(node: ast.expr, prefix: str) -> str | None:
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "_v0":
        inner = _path_of(node.args[0], "")
        return inner if inner is None or inner.startswith("/api/v") else "/api/v0" + inner
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return prefix + node.value
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else ":id" for v in node.values]
        return prefix + "".join(str(p) for p in parts)
    return None


def sent(module, prefix: str) -> set[tuple[str, str]]:
    """(method, path) of every ``self.http.request(...)`` in the adapter's source."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "request":
            method, path = node.args[0], _path_of(node.args[1], prefix)
            assert isinstance(method, ast.Constant) and path is not None, ast.dump(node)
            out.add((method.value, path))
    return out


@pytest.mark.parametrize(("module", "prefix"), [(vastai, ""), (tensordock, tensordock.API_PATH)])
def test_every_request_an_adapter_sends_is_in_its_table(module, prefix):
    table = {(c.method, re.sub(r":[a-z_]+", ":id", c.path)) for c in module.API_CALLS}
    calls = sent(module, prefix)
    assert calls, "no requests found: the scan is broken"
    assert calls <= table, f"not in API_CALLS: {sorted(calls - table)}"
    assert table <= calls, f"listed but never sent: {sorted(table - calls)}"


def test_every_official_endpoint_is_called_or_says_why_not():
    text = docgen.api_coverage()
    for name in ("vastai-endpoints.tsv", "tensordock-v2-endpoints.tsv"):
        for method, path, _title in docgen.read_tsv(name):
            assert f"| {method} | `{path}` |" in text
    assert "price cap, not a bid" in docgen.environment()


@pytest.mark.parametrize("name", ["template-catalog.md", "lifecycle.md"])
def test_sandbox_documents_say_so_and_name_their_generator(name):
    text = (docgen.DOCS / name).read_text(encoding="utf-8")
    assert text.startswith(docgen.HEADER)  # the command that makes it, at the top
    assert "**Sandbox data, not a real market.**" in text
    assert "(sandbox)" in text


def test_lifecycle_explains_each_phase_logs_and_ssh():
    text = docgen.lifecycle()
    for phrase in (
        "create call", "time to running", "time to SSH", "setup", "destroy to gone",
        "sessions logs", "request_logs", "no log endpoint", "proxy", "useDedicatedIp",
        "port 22", "sessions stats",
    ):  # fmt: skip
        assert phrase in text, phrase
