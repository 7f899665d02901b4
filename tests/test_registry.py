"""Every registered provider: the right name, the whole protocol, and its own emulator tests."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from gpushopper.model.errors import MissingCredentials
from gpushopper.providers.base import Provider
from gpushopper.providers.registry import REGISTRY, provider_class, provider_names
from gpushopper.state.config import Settings
from gpushopper.state.paths import resolve_paths

ROOT = Path(__file__).resolve().parent
PROTOCOL = [
    name
    for name, member in inspect.getmembers(Provider)
    if not name.startswith("_") and (inspect.isfunction(member) or inspect.ismethod(member))
]


@pytest.mark.parametrize("name", provider_names())
def test_provider_implements_the_protocol(name):
    cls = provider_class(name)
    assert name == cls.NAME
    assert set(PROTOCOL) >= {
        "search_offers",
        "create_instance",
        "destroy_instance",
        "list_instances",
    }
    for method in PROTOCOL:
        assert callable(getattr(cls, method, None)), f"{name} lacks {method}"


@pytest.mark.parametrize("name", provider_names())
def test_provider_has_an_emulator_and_its_tests(name):
    assert (ROOT.parent / "gpushopper" / "sandbox" / f"{name}.py").is_file()
    assert (ROOT / f"test_fake_{name}.py").is_file()
    assert (ROOT / f"test_providers_{name}.py").is_file()


@pytest.mark.parametrize("name", provider_names())
def test_missing_credentials_is_typed_so_the_provider_is_skipped(name):
    settings = Settings(paths=resolve_paths(), environ={})
    with pytest.raises(MissingCredentials) as err:
        provider_class(name).from_settings(settings)
    assert err.value.provider == name


def test_unknown_provider_name():
    with pytest.raises(ValueError, match="unknown provider"):
        provider_class("aws")
    assert set(REGISTRY) == {"vastai", "tensordock"}


def test_no_other_module_names_a_provider():
    """Provider names are spelled once, in providers/registry.py (and each adapter's NAME)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "gpushopper"
    allowed = {"providers/registry.py"} | {f"providers/{name}.py" for name in provider_names()}
    # The ground floor cannot import the registry: OfferQuery's default is checked below.
    allowed.add("model/models.py")
    # The official Vast.ai CLI's own config folder (~/.config/vastai), not a provider list.
    allowed.add("state/paths.py")
    # The practice market emulates each provider's API (its own module per provider).
    allowed |= {f"sandbox/{name}.py" for name in provider_names()}
    # ... and its server wires those emulators together (one line per market).
    allowed.add("sandbox/server.py")
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in REGISTRY:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert found == []


def test_offer_ids_are_parsed_by_the_registry():
    from gpushopper.model.errors import UsageError
    from gpushopper.providers.registry import split_offer_id

    assert split_offer_id("vastai:12") == ("vastai", "12")
    assert split_offer_id("tensordock:n-1:rtx4090") == ("tensordock", "n-1:rtx4090")
    for bad, says in [
        ("vastai:x", "not a Vast.ai offer id"),
        ("tensordock:n1", "not a TensorDock offer id"),
        ("aws:1", "expected vastai:<ask id> or tensordock:<hostnode id>:<gpu model>"),
        ("  ", "the offer id is empty"),
    ]:
        with pytest.raises(UsageError, match=says):
            split_offer_id(bad)


def test_the_ground_floor_default_is_every_registered_provider():
    from gpushopper.model.models import OfferQuery

    assert OfferQuery().providers == provider_names()


def test_a_short_offer_id_resolves_only_to_an_id_the_user_could_have_typed():
    """A listing's id (the offer cache) is held to split_offer_id's rules like a typed one:
    a prefix never stands for "tensordock:node/../x:gpu"."""
    from gpushopper.model.errors import UsageError
    from gpushopper.providers.registry import resolve_offer_id

    good = "tensordock:node-1234:h100-sxm5-80gb"
    assert resolve_offer_id("tensordock:node-12", lambda _p: [good]) == good
    bad = "tensordock:node-9/../x:h100-sxm5-80gb"
    with pytest.raises(UsageError):
        resolve_offer_id("tensordock:node-9", lambda _p: [bad])
