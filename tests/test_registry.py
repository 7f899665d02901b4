"""Every registered provider: the right name, the whole protocol, and its own emulator tests."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from gpushopper.model.errors import MissingCredentials
from gpushopper.providers.base import REGISTRY, Provider, provider_class, provider_names
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
    assert (ROOT / "fakes" / f"{name}.py").is_file()
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
