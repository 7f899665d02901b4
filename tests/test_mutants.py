"""scripts/mutants.py stays in step with the code: a mutant whose edit no longer applies
would stop the whole run (and guard nothing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutant_still_applies_to_the_code_and_names_existing_tests():
    mutants = load()
    assert mutants.MUTANTS
    assert {m.name: mutants.stale(m) for m in mutants.MUTANTS if mutants.stale(m)} == {}


def test_help_and_an_unknown_name_do_not_pass_for_a_clean_run(monkeypatch, capsys):
    mutants = load()
    monkeypatch.setattr("sys.argv", ["mutants.py", "--help"])
    assert mutants.main() == 0 and "Mutants:" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["mutants.py", "no-such-mutant"])
    assert mutants.main() == 2
