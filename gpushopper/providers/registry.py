"""The one list of providers: names, classes, configs, offer ids and deadline hooks.

Everything else derives from ``ENTRIES`` (the CLI's ``--provider`` choices, ``doctor``, offer
id parsing, the deadline snippets); tests/test_registry.py fails when any other module spells
a provider name. Each provider's typed config (its key, URL, ssh user, ...) is read from the
settings here and nowhere else: an adapter never reads a dotted key. This module imports
nothing heavy: the light commands load it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from gpushopper.model.errors import UsageError
from gpushopper.model.lazyre import LazyPattern

if TYPE_CHECKING:
    from gpushopper.providers.base import HttpConfig, Provider, SettingsReader
    from gpushopper.providers.tensordock import TensorDockConfig
    from gpushopper.providers.vastai import VastAIConfig


class DeadlineHook(NamedTuple):  # a NamedTuple: a frozen dataclass costs ~0.7 ms at import
    """How an instance of this provider enforces its own deadline (core/deadline.py)."""

    style: str  # which snippet: "destroy-by-api" (calls the provider) or "power-off"
    default_file: str  # where the deadline file lives on the instance
    api_url_setting: str | None = None  # settings key of the API base the snippet calls
    api_url_default: str | None = None
    secret_setting: str | None = None  # a secret that must never appear in the snippet


class Entry(NamedTuple):  # a NamedTuple: a frozen dataclass costs ~0.7 ms at import
    name: str
    target: str  # "module:Class", imported only when the provider is used
    title: str  # the provider's own spelling, for messages
    offer_form: str  # an offer id's shape, as a message shows it
    native_form: str  # the shape named when this provider's id is malformed
    native_ok: Callable[[str], bool]
    # settings -> the provider's own frozen config (the class takes it; MissingCredentials
    # without a key)
    configure: Callable[[SettingsReader], object]
    deadline: DeadlineHook | None = None
    # Long ids (a TensorDock hostnode uuid) are shown and taken as unique prefixes; a
    # Vast.ai ask is a short number, and a shorter number is another ask.
    short_native: int | None = None
    templates_hint: str = ""  # what --template names here, for a template it lacks


def http_config(settings: SettingsReader) -> HttpConfig:
    """The HTTP knobs every provider client takes from the settings."""
    from gpushopper.providers.base import HttpConfig

    return HttpConfig(
        timeout=settings.get("defaults.http_timeout"),
        retries=settings.get("defaults.http_retries"),
        backoff=settings.get("defaults.http_backoff"),
    )


def vastai_config(settings: SettingsReader) -> VastAIConfig:
    from gpushopper.providers.common import require
    from gpushopper.providers.vastai import VastAIConfig

    key = require(
        settings.get("vastai.api_key"),
        "vastai",
        "set VASTAI_API_KEY or run 'gpu-shopper config set vastai.api_key -' (reads stdin)",
    )
    return VastAIConfig(
        api_key=key,
        api_url=settings.get("vastai.api_url"),
        ssh_user=settings.get("vastai.ssh_user"),
        max_price=settings.get("vastai.max_price"),
        http=http_config(settings),
    )


def tensordock_config(settings: SettingsReader) -> TensorDockConfig:
    from gpushopper.providers.common import require
    from gpushopper.providers.tensordock import TensorDockConfig

    token = require(
        settings.get("tensordock.api_token"),
        "tensordock",
        "set TENSORDOCK_API_TOKEN or run 'gpu-shopper config set tensordock.api_token -' (reads stdin)",
    )
    return TensorDockConfig(
        api_token=token,
        api_url=settings.get("tensordock.api_url"),
        ssh_user=settings.get("tensordock.ssh_user"),
        image=settings.get("tensordock.image"),
        vcpus_per_gpu=settings.get("tensordock.vcpus_per_gpu"),
        ram_per_gpu=settings.get("tensordock.ram_gb_per_gpu"),
        http=http_config(settings),
    )


_TD_NATIVE = LazyPattern(r"[A-Za-z0-9_-]+:[A-Za-z0-9_.-]+")

ENTRIES: tuple[Entry, ...] = (
    Entry(
        name="vastai",
        target="gpushopper.providers.vastai:VastAI",
        title="Vast.ai",
        offer_form="vastai:<ask id>",
        native_form="vastai:<number>",
        native_ok=lambda native: native.isascii() and native.isdigit(),  # never "²"
        configure=vastai_config,
        deadline=DeadlineHook(
            style="destroy-by-api",
            default_file="/root/.gpu-shopper/deadline",
            api_url_setting="vastai.api_url",
            api_url_default="https://console.vast.ai",
            secret_setting="vastai.api_key",
        ),
        templates_hint="see 'gpu-shopper templates --provider vastai --name ...'",
    ),
    Entry(
        name="tensordock",
        target="gpushopper.providers.tensordock:TensorDock",
        title="TensorDock",
        offer_form="tensordock:<hostnode id>:<gpu model>",
        native_form="tensordock:<hostnode id>:<gpu model>",
        native_ok=lambda native: _TD_NATIVE.fullmatch(native) is not None,
        configure=tensordock_config,
        deadline=DeadlineHook(style="power-off", default_file="/var/lib/gpu-shopper/deadline"),
        short_native=8,
        templates_hint=(
            "TensorDock has OS images, not templates: 'gpu-shopper templates --provider "
            "tensordock' lists them, e.g. --template ubuntu2404_ml_pytorch"
        ),
    ),
)
BY_NAME: dict[str, Entry] = {entry.name: entry for entry in ENTRIES}
PROVIDERS: tuple[str, ...] = tuple(BY_NAME)
# name -> "module:Class"; imported only when that provider is used.
REGISTRY: dict[str, str] = {entry.name: entry.target for entry in ENTRIES}


def provider_names() -> list[str]:
    return list(PROVIDERS)


def provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name`` (imported lazily)."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r} (known: {', '.join(REGISTRY)})") from None
    module_name, _, attr = target.partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), attr)
    return cls


def provider_config(name: str, settings: SettingsReader) -> object:
    """The typed config provider ``name``'s class is built from, read from ``settings``
    (MissingCredentials when its key is unset)."""
    try:
        entry = BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r} (known: {', '.join(REGISTRY)})") from None
    return entry.configure(settings)


def no_template(name: str, ident: str) -> str:
    """``<provider>: no template '<ident>' (what this provider's templates are)``."""
    entry = BY_NAME.get(name)
    hint = f" ({entry.templates_hint})" if entry is not None and entry.templates_hint else ""
    return f"{name}: no template {ident!r}{hint}"


def deadline_hook(name: str) -> DeadlineHook | None:
    entry = BY_NAME.get(name)
    return entry.deadline if entry is not None else None


def split_offer_id(offer_id: str) -> tuple[str, str]:
    """``vastai:123`` -> ("vastai", "123"); ``tensordock:<node>:<gpu>`` -> (..., "<node>:<gpu>")."""
    if not offer_id.strip():
        example = f"{ENTRIES[0].name}:1234"
        raise UsageError(
            f"the offer id is empty (an unset shell variable?); give one such as {example}, "
            "or leave it out to rent the best offer"
        )
    provider, sep, native = offer_id.partition(":")
    entry = BY_NAME.get(provider)
    if not sep or not native or entry is None:
        forms = " or ".join(e.offer_form for e in ENTRIES)
        raise UsageError(f"not an offer id: {offer_id!r} (expected {forms})")
    if not entry.native_ok(native):
        raise UsageError(
            f"not a {entry.title} offer id: {offer_id!r} (expected {entry.native_form})"
        )
    return provider, native


def short_offer_ids(offer_ids: Sequence[str], known: Sequence[str] = ()) -> dict[str, str]:
    """Each offer id -> how a table shows it: a unique prefix for providers whose ids are
    long (at least the provider name and ``short_native`` characters), else the whole id."""
    from gpushopper.model.ids import short_ids

    out = {offer_id: offer_id for offer_id in offer_ids}
    for entry in ENTRIES:
        if entry.short_native is None:
            continue
        mine = [o for o in offer_ids if o.startswith(entry.name + ":")]
        if mine:
            others = [k for k in known if k.startswith(entry.name + ":")]
            out.update(short_ids(mine, others, minimum=len(entry.name) + 1 + entry.short_native))
    return out


def resolve_offer_id(offer_id: str, known: Callable[[str], list[str]]) -> str:
    """The offer id ``offer_id`` names: the id itself, or (for providers with long ids)
    the one id among ``known(provider)`` (offers recently listed) it is a prefix of.
    Malformed or unknown short forms are UsageError; a prefix of several, AmbiguousId."""
    from gpushopper.model.ids import match_prefix

    provider, sep, native = offer_id.partition(":")
    entry = BY_NAME.get(provider)
    if entry is not None and sep and native and entry.short_native is not None:
        found = match_prefix(offer_id, known(provider), "offer", floor=len(provider) + 1)
        if found is not None:
            offer_id = found  # from a listing: held to the same rules as a typed id
    split_offer_id(offer_id)
    return offer_id


def offer_id_ok(offer_id: str, provider: str) -> bool:
    """Is ``offer_id`` one ``provider`` could be asked to rent (split_offer_id's rules)?"""
    try:
        return split_offer_id(offer_id)[0] == provider
    except UsageError:
        return False
