"""pytest fixtures around the sandbox emulators (gpushopper/sandbox/ is stdlib only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpushopper.sandbox import sshd
from gpushopper.sandbox.sshd import SshdPool
from gpushopper.sandbox.tensordock import TensorDockEmulator
from gpushopper.sandbox.vastai import VastEmulator


@pytest.fixture
def sshd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdPool]:
    """A fresh SshdPool; every sshd it started is stopped at teardown."""
    if sshd.find_sshd() is None:
        pytest.fail(sshd.SSHD_MISSING, pytrace=False)
    pool = SshdPool(tmp_path_factory.mktemp("sshd"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def vast_emulator() -> Iterator[VastEmulator]:
    """A started emulator with ``seed_default_offers()``; stopped at teardown."""
    emu = VastEmulator()
    emu.seed_default_offers()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def tensordock_emulator() -> Iterator[TensorDockEmulator]:
    """A started TensorDock v2 emulator seeded with ``seed_default()``; stopped at teardown."""
    emu = TensorDockEmulator()
    emu.seed_default()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
