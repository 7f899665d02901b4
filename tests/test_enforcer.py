"""The enforcer carries out every action even when one of them blows up."""

from __future__ import annotations

from datetime import datetime, timezone

from gpushopper.core.enforcer import Enforcer
from gpushopper.core.lifecycle import DESTROY_ORPHAN, Action
from gpushopper.state.store import StateStore


class FlakyProvider:
    NAME = "vastai"

    def __init__(self) -> None:
        self.live = {"1", "2"}

    def destroy_instance(self, instance_id: str) -> None:
        if instance_id == "1":
            raise RuntimeError("bug in the adapter")
        self.live.discard(instance_id)

    def get_instance(self, instance_id: str):
        return object() if instance_id in self.live else None


def test_one_action_blowing_up_does_not_stop_the_others(tmp_path):
    provider = FlakyProvider()
    outcomes = []
    enforcer = Enforcer(
        store=StateStore(tmp_path / "state.json"),
        provider_factory=lambda name: provider,
        providers=["vastai"],
        clock=lambda: datetime(2026, 11, 23, tzinfo=timezone.utc),
        on_outcome=outcomes.append,
        sleep=lambda s: None,
    )
    actions = [Action(DESTROY_ORPHAN, "unknown_to_state", "vastai", instance_id=i) for i in "12"]
    results = enforcer.execute_all(actions)
    assert [r.result for r in results] == ["failed", "destroyed"]
    assert "RuntimeError: bug in the adapter" in (results[0].error or "")
    assert provider.live == {"1"}
    assert len(outcomes) == 2  # both were reported (logged, alerted)
