"""Every registered provider: the right name, the whole protocol, and its own emulator tests."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from gpushopper.model.errors import AuthFailed, MissingCredentials, ProviderError
from gpushopper.model.models import OfferQuery
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


# -- each provider's typed config, read from the settings here and nowhere else ----------------
SECRETS = {"vastai": "vk-0123456789abcdef-secret", "tensordock": "tt-0123456789abcdef-secret"}
KEY_ENV = {"vastai": "VASTAI_API_KEY", "tensordock": "TENSORDOCK_API_TOKEN"}
URL_ENV = {"vastai": "VASTAI_API_URL", "tensordock": "TENSORDOCK_API_URL"}


def _settings(name: str, **extra: str) -> Settings:
    return Settings(paths=resolve_paths(), environ={KEY_ENV[name]: SECRETS[name], **extra})


def test_every_setting_a_provider_takes_reaches_its_config():
    from types import SimpleNamespace

    from gpushopper.providers.base import HttpConfig
    from gpushopper.providers.registry import provider_config
    from gpushopper.providers.tensordock import TensorDockConfig
    from gpushopper.providers.vastai import VastAIConfig

    values = {
        "vastai.api_key": "k-1234567890",
        "vastai.api_url": "http://127.0.0.1:1",
        "vastai.ssh_user": "ubuntu",
        "vastai.max_price": 0.3,
        "tensordock.api_token": "t-1234567890",
        "tensordock.api_url": "http://127.0.0.1:2/api/v2",
        "tensordock.ssh_user": "root",
        "tensordock.image": "ubuntu2204",
        "tensordock.vcpus_per_gpu": 6,
        "tensordock.ram_gb_per_gpu": 48,
        "defaults.http_timeout": 7.5,
        "defaults.http_retries": 2,
        "defaults.http_backoff": 0.25,
    }
    reader = SimpleNamespace(get=values.get)  # a SettingsReader: any get-alike
    http = HttpConfig(timeout=7.5, retries=2, backoff=0.25)
    assert provider_config("vastai", reader) == VastAIConfig(
        "k-1234567890", "http://127.0.0.1:1", ssh_user="ubuntu", max_price=0.3, http=http
    )
    assert provider_config("tensordock", reader) == TensorDockConfig(
        "t-1234567890",
        "http://127.0.0.1:2/api/v2",
        ssh_user="root",
        image="ubuntu2204",
        vcpus_per_gpu=6,
        ram_per_gpu=48,
        http=http,
    )
    with pytest.raises(ValueError, match="unknown provider"):
        provider_config("aws", reader)


@pytest.mark.parametrize("name", provider_names())
def test_the_client_is_built_from_the_config_the_settings_give(name):
    import dataclasses

    from gpushopper.providers.registry import provider_config

    settings = _settings(name, **{URL_ENV[name]: "http://127.0.0.1:9/"})
    config = provider_config(name, settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ssh_user = "someone"
    client = provider_class(name).from_settings(settings)
    assert client.ssh_user == config.ssh_user == settings.get(f"{name}.ssh_user")
    assert client.api_url == "http://127.0.0.1:9"
    assert client.http.max_attempts == config.http.retries == settings.get("defaults.http_retries")
    assert client.http.timeout[1] == config.http.timeout
    assert client.http.backoff_base == config.http.backoff


@pytest.mark.parametrize("name", provider_names())
def test_a_config_never_shows_its_key(name):
    from gpushopper.providers.registry import provider_config

    config = provider_config(name, _settings(name))
    assert SECRETS[name] in vars(config).values()  # it holds it, for the client's header
    for shown in (repr(config), str(config), f"{config}", f"{config!r}", repr([config])):
        assert SECRETS[name] not in shown
        assert type(config).__name__ in shown


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("vastai", "set VASTAI_API_KEY or run 'gpu-shopper config set vastai.api_key -'"),
        ("tensordock", "set TENSORDOCK_API_TOKEN or run 'gpu-shopper config set tensordock"),
    ],
)
def test_the_missing_key_message_names_the_variable(name, says):
    settings = Settings(paths=resolve_paths(), environ={})
    with pytest.raises(MissingCredentials) as err:
        provider_class(name).from_settings(settings)
    assert str(err.value).startswith(f"{name}: no credentials configured ({says}")
    assert str(err.value).endswith(" (reads stdin))")


@pytest.mark.parametrize("name", provider_names())
def test_an_error_never_shows_the_key(name, request):
    """A wrong key (the emulator refuses it) fails as AuthFailed, over real HTTP; neither the
    error nor the config it came from shows the key."""
    emu = request.getfixturevalue(f"{'vast' if name == 'vastai' else name}_emulator")
    settings = _settings(name, **{URL_ENV[name]: emu.url})
    client = provider_class(name).from_settings(settings)
    with pytest.raises(AuthFailed) as err:
        client.search_offers(OfferQuery())
    for shown in (str(err.value), repr(err.value), repr(err.value.args)):
        assert SECRETS[name] not in shown
    assert client.http.headers["Authorization"] == f"Bearer {SECRETS[name]}"  # it was sent


def test_no_adapter_reads_a_setting():
    """Only the registry reads a provider's dotted keys; an adapter takes its config."""
    for name in provider_names():
        source = (ROOT.parent / "gpushopper" / "providers" / f"{name}.py").read_text()
        assert "settings.get(" not in source, name
        assert f'"{name}.' not in source, name


@pytest.mark.parametrize("name", provider_names())
def test_a_key_the_server_echoes_is_redacted_by_the_client_the_config_built(name):
    """Built from a plain reader (no Settings registering secrets first), the client itself
    registers its key: an error that quotes it shows it masked."""
    import uuid
    from types import SimpleNamespace

    from gpushopper.providers.registry import provider_config
    from tests.fakes.scripted_http import ScriptedServer

    secret = f"echoed-{uuid.uuid4().hex}"  # never registered by any earlier test
    key = "vastai.api_key" if name == "vastai" else "tensordock.api_token"
    with ScriptedServer() as server:
        server.add(400, {"error": "bad_request", "msg": f"rejected key {secret}"})
        values = {key: secret, f"{name}.api_url": server.url, "defaults.http_retries": 1}
        defaults = Settings(paths=resolve_paths(), environ={})  # holds no key
        reader = SimpleNamespace(get=lambda k: values[k] if k in values else defaults.get(k))
        config = provider_config(name, reader)
        with pytest.raises(ProviderError) as err:
            provider_class(name)(config).search_offers(OfferQuery())
    assert "rejected key" in str(err.value)
    assert secret not in str(err.value) and secret not in repr(err.value)


@pytest.mark.parametrize("name", ["vastai", "tensordock"])
def test_a_config_class_default_is_the_settings_default(name, isolated_home):
    # The defaults are written twice, on each config class and on its Setting
    # (state/config.py). A client built without the registry must be the same client.
    from types import SimpleNamespace

    from gpushopper.providers.registry import provider_config

    key = "vastai.api_key" if name == "vastai" else "tensordock.api_token"
    defaults = Settings(paths=resolve_paths(), environ={})
    reader = SimpleNamespace(get=lambda k: "k" * 20 if k == key else defaults.get(k))
    built = provider_config(name, reader)
    assert built == type(built)("k" * 20)
