"""The audit journal: one JSON line per provider mutation (create, destroy, key attach).

Every path that changes something at a provider goes through :class:`JournaledProvider`,
so the journal answers "what did this tool create or destroy, and when" even when the
state file cannot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast

from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.redact import clip, redact_tree

if TYPE_CHECKING:
    from gpushopper.model.models import LaunchSpec
    from gpushopper.providers.base import Provider

P = ParamSpec("P")
R = TypeVar("R")

MUTATIONS = ("create_instance", "destroy_instance", "attach_ssh_key")
# What parsing a wrong-shaped answer raises (a list where an object was expected...).
MALFORMED = (
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    ValueError,
    OverflowError,
    RecursionError,
)


def append(path: Path, event: JSONObject) -> None:
    """Append one line (O_APPEND keeps concurrent writers' lines whole)."""
    from gpushopper.state.fs import open_nofollow, private_dir

    private_dir(path.parent)
    plain = json.loads(json.dumps(event, default=str))  # objects as text, then redacted
    line = json.dumps(redact_tree(plain), sort_keys=True) + "\n"
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class JournaledProvider:
    """Forwards everything to ``inner``; records each mutation and its outcome."""

    def __init__(self, inner: Provider, path: Path) -> None:
        self._inner = inner
        self._path = path

    @classmethod
    def wrap(cls, inner: Provider, path: Path) -> Provider:
        """``inner`` behind the journal, typed as what it forwards to. The proxy answers
        every attribute through ``__getattr__``, which a Protocol check cannot see: the
        one cast of the provider seam, here."""
        return cast("Provider", cls(inner, path))

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr) or isinstance(attr, type):
            return attr
        if name not in MUTATIONS:
            return self._shield(name, attr)
        # Mutations keep their own failure path: a crash after a create is looked up by
        # label and destroyed, never adopted as if the create had answered.
        return self._wrap(name, attr)

    def _shield(self, op: str, func: Callable[P, R]) -> Callable[P, R]:
        """A provider answer of the wrong shape is that provider's error (exit 1, one
        line, isolated to its pass), never a crash of the whole command."""

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except MALFORMED as exc:
                from gpushopper.model.errors import ProviderError

                raise ProviderError(
                    getattr(self._inner, "NAME", "?"),
                    f"{op}: the answer had an unexpected shape ({type(exc).__name__}: "
                    f"{clip(str(exc), 120)})",
                ) from None

        return call

    def _wrap(self, op: str, func: Callable[P, R]) -> Callable[P, R]:
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            event: JSONObject = {
                "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                "pid": os.getpid(),
                "provider": getattr(self._inner, "NAME", "?"),
                "op": op,
            }
            if op == "create_instance" and args:
                spec = cast("LaunchSpec", args[0])  # create_instance(spec)
                event.update(offer_id=spec.offer.id, label=spec.label)
            elif args:
                event["instance_id"] = str(args[0])
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                event.update(result="error", error=clip(f"{type(exc).__name__}: {exc}", 300))
                self._record(event)
                raise
            if op == "create_instance":
                event["instance_id"] = str(result)
            event["result"] = "ok"
            self._record(event)
            return result

        return call

    def note(self, op: str, **fields: object) -> None:
        """Record an outcome that is not a provider call (say, a state file that could not
        be written after a destroy), when the journal can be written at all."""
        self._record(
            {
                "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                "pid": os.getpid(),
                "provider": getattr(self._inner, "NAME", "?"),
                "op": op,
                **fields,
            }
        )

    def _record(self, event: JSONObject) -> None:
        try:
            append(self._path, event)
        except OSError:
            pass  # the journal is an aid; it must never block a destroy
