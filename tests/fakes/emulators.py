"""Stand-ins the emulator tests plug into either market (tests/test_fake_*.py): a clock the
test moves, and an SSH backend (gpushopper/sandbox/base.py ``SSHBackend``) that only records."""

from __future__ import annotations

from typing import Any


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingBackend:
    """Stand-in for the real-sshd pool: records every call, hands out ports after ``first_port``."""

    def __init__(self, first_port: int = 42022) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.next_port = first_port

    def start(
        self, instance_key: str, authorized_keys: list[str], gpu: dict[str, Any]
    ) -> tuple[str, int]:
        self.calls.append(("start", instance_key, list(authorized_keys), dict(gpu)))
        self.next_port += 1
        return "127.0.0.1", self.next_port

    def set_keys(self, instance_key: str, authorized_keys: list[str]) -> None:
        self.calls.append(("set_keys", instance_key, list(authorized_keys)))

    def stop(self, instance_key: str) -> None:
        self.calls.append(("stop", instance_key))

    def names(self) -> list[str]:
        """The calls' names, in order."""
        return [c[0] for c in self.calls]
