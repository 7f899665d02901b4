"""An in-process provider (the Provider protocol, no HTTP) with the faults the destroy path
must survive. The HTTP emulators test the adapters; this tests the safety code itself, fast
and on a fake clock.

Knobs (all off by default):

* ``linger``: after a destroy, ``get_instance`` still shows the instance this many times
  (``FOREVER``: it never goes).
* ``destroy_failures``: ``destroy_instance`` raises Unavailable this many times
  (``FOREVER``: always).
* ``list_lag``: a new instance is missing from ``list_instances`` for this many calls.
* ``listing``: ``"ok"``, ``"malformed"`` (list_instances raises Unavailable, as the real
  parsers do for ``{}``/``[]``/``null``), ``"partial"`` (only instances not carrying
  ``partial_drops`` labels), ``"empty"`` (a well-formed empty list).
* ``duplicates``: extra listing rows, e.g. a foreign id repeated under our label.
* ``create_error_after_create``: the create happens, then raises Unavailable.
* ``create_answers``: the create answers this id instead of the real one.
* ``boot_polls``: ``get_instance`` says "loading" this many times before "running".
* ``on_get``: called with the instance id on every ``get_instance`` (to advance a clock,
  send a signal...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpushopper.model.errors import Unavailable
from gpushopper.model.models import Instance, LaunchSpec

FOREVER = 1 << 30


@dataclass
class FakeInstance:
    instance_id: str
    label: str | None
    status: str = "running"
    destroyed: bool = False
    linger_left: int = 0
    unlisted_for: int = 0  # listing calls it is still missing from
    polls_to_running: int = 0


@dataclass
class FakeProvider:
    NAME: str = "vastai"
    ssh_user: str = "root"
    linger: int = 0
    destroy_failures: int = 0
    list_lag: int = 0
    listing: str = "ok"
    partial_drops: set[str] = field(default_factory=set)
    duplicates: list[Instance] = field(default_factory=list)
    create_error_after_create: bool = False
    create_answers: str | None = None
    boot_polls: int = 0
    on_get: Callable[[str], None] | None = None
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 100

    # -- setting up --------------------------------------------------------------------------
    def add(self, label: str | None, status: str = "running", iid: str | None = None) -> str:
        """An instance that exists at the provider already (ours, an orphan, a foreign one)."""
        iid = iid or self._new_id()
        self.instances[iid] = FakeInstance(iid, label, status)
        return iid

    def _new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def live(self) -> set[str]:
        return {i for i, inst in self.instances.items() if not inst.destroyed}

    def count(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)

    # -- the protocol ------------------------------------------------------------------------
    def create_instance(self, spec: LaunchSpec) -> str:
        iid = self._new_id()
        self.calls.append(("create_instance", iid))
        self.instances[iid] = FakeInstance(
            iid,
            spec.label,
            "loading" if self.boot_polls else "running",
            unlisted_for=self.list_lag,
            polls_to_running=self.boot_polls,
        )
        if self.create_error_after_create:
            raise Unavailable(self.NAME, "HTTP 500: created, then failed to answer")
        return self.create_answers or iid

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        self.calls.append(("attach_ssh_key", instance_id))

    def _view(self, inst: FakeInstance) -> Instance:
        return Instance(
            self.NAME,
            inst.instance_id,
            inst.label,
            inst.status,
            raw_status=inst.status,
            ssh_host="127.0.0.1" if inst.status == "running" else None,
            ssh_port=22 if inst.status == "running" else None,
            price_per_hour=0.5,
        )

    def get_instance(self, instance_id: str) -> Instance | None:
        self.calls.append(("get_instance", instance_id))
        if self.on_get is not None:
            self.on_get(instance_id)
        inst = self.instances.get(instance_id)
        if inst is None:
            return None
        if inst.destroyed:
            if inst.linger_left <= 0:
                return None
            inst.linger_left -= 1
            return self._view(FakeInstance(inst.instance_id, inst.label, "stopping"))
        if inst.polls_to_running > 0:
            inst.polls_to_running -= 1
            if inst.polls_to_running == 0:
                inst.status = "running"
        return self._view(inst)

    def list_instances(self) -> list[Instance]:
        self.calls.append(("list_instances", ""))
        if self.listing == "malformed":
            raise Unavailable(self.NAME, "instance list answered without an 'instances' list: {}")
        if self.listing == "empty":
            return []
        out = []
        for inst in self.instances.values():
            if inst.destroyed and inst.linger_left <= 0:
                continue
            if inst.unlisted_for > 0:
                inst.unlisted_for -= 1
                continue
            if self.listing == "partial" and inst.label in self.partial_drops:
                continue
            out.append(self._view(inst))
        return out + list(self.duplicates)

    def destroy_instance(self, instance_id: str) -> None:
        self.calls.append(("destroy_instance", instance_id))
        if self.destroy_failures > 0:
            self.destroy_failures -= 1
            raise Unavailable(self.NAME, "HTTP 503: try again")
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed:
            return
        inst.destroyed = True
        inst.linger_left = self.linger


def factory(*providers: FakeProvider) -> Callable[[str], Any]:
    """A provider_factory serving these fakes by name."""
    by_name = {p.NAME: p for p in providers}

    def get(name: str) -> Any:
        return by_name[name]

    return get


__all__ = ["FOREVER", "FakeInstance", "FakeProvider", "factory"]
