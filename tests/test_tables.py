"""Tables as people read them: as wide as the terminal (piped or not), no trailing
spaces, ids whole and short, values without Python reprs; ids typed back as prefixes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from gpushopper.cli.output import cell_text, column_widths, number_text
from gpushopper.model.ids import AmbiguousId, match_prefix, short_ids
from gpushopper.model.session import Session
from gpushopper.providers.registry import resolve_offer_id
from gpushopper.state.store import StateStore
from tests.fakes.tool import spawn_tool

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def check_fits(text: str, width: int) -> list[str]:
    """The table's lines: none longer than ``width``, none ending in a space."""
    lines = ANSI.sub("", text).splitlines()
    assert lines, "no table"
    for line in lines:
        assert len(line) <= width, f"{len(line)} > {width}: {line!r}"
        assert line == line.rstrip(), f"trailing space: {line!r}"
    return lines


def words_of(lines: list[str]) -> set[str]:
    return {w for line in lines for w in line.split()}


@pytest.fixture
def td_session(tensordock, vast, gs):
    result = gs("provision --provider tensordock --gpu 4090 --hours 1h --yes --json")
    assert result.exit_code == 0, result.stderr
    return result.json()


@pytest.mark.parametrize("width", [80, 120])
def test_every_table_fits_columns_when_piped(td_session, gs, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    tables = {
        "inventory --gpu 4090": ["OFFER"],
        "sessions": ["SESSION", td_session["id"], "running", "tensordock"],
        "sessions --all": [td_session["id"], "running"],
        "costs": [td_session["id"], "total"],
        "costs summary": ["total"],
        "templates": ["ubuntu2404_ml_pytorch"],
        "config list": ["defaults.min_reliability"],
        "doctor": ["CHECK"],
    }
    for command, expected in tables.items():
        result = gs(command)
        assert result.exit_code in (0, 1), (command, result.stderr)
        lines = check_fits(result.stdout, width)
        assert set(expected) <= words_of(lines), (command, result.stdout)
    # a TensorDock offer id: one unbroken prefix on one line, never folded over nine
    offers = gs("inventory --gpu 4090 --provider tensordock").stdout
    full = gs("inventory --gpu 4090 --provider tensordock --json").json()[0]["id"]
    lines = check_fits(offers, width)
    first = lines[next(i for i, line in enumerate(lines) if line.startswith("─")) + 1].split()[0]
    assert full.startswith(first) and len(first) >= len("tensordock:") + 8
    assert len(first) < len(full)


def test_no_columns_and_no_terminal_is_80_wide(td_session, gs, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    check_fits(gs("inventory").stdout, 80)
    check_fits(gs("sessions").stdout, 80)


def _pty_run(args: list[str], columns: int, env: dict[str, str]) -> str:
    """Run gpu-shopper with stdout on a pseudo-terminal ``columns`` wide; COLUMNS only as
    ``env`` sets it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = spawn_tool(*args, env=env, unset=("COLUMNS",), stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.mark.parametrize("by", ["COLUMNS", "terminal"])
def test_on_a_terminal_the_width_is_honoured_too(td_session, by):
    env = {"COLUMNS": "80"} if by == "COLUMNS" else {}
    out = _pty_run(["sessions"], 80 if by == "terminal" else 200, env)
    assert "\x1b[" in out  # a terminal: colour
    lines = check_fits(out, 80)
    assert {td_session["id"], "running", "tensordock"} <= words_of(lines)


# -- values ---------------------------------------------------------------------------------
def test_values_print_as_people_read_them():
    assert number_text(0.38333333333333336) == "0.383"
    assert number_text(24.6) == "24.6"
    assert number_text(12.0) == "12"
    assert number_text(4.9e-05) == "0.000049"
    assert number_text(0.0) == "0"
    assert cell_text(True) == "yes" and cell_text(False) == "no"
    assert cell_text(["NVIDIA GeForce RTX 4090", "NVIDIA A100"]) == (
        "NVIDIA GeForce RTX 4090, NVIDIA A100"
    )
    assert cell_text([]) == "-" and cell_text(None) == "-"
    assert cell_text({"8675/tcp": 40001}) == "8675/tcp=40001"


def test_show_of_a_session_has_no_python_reprs(td_session, gs):
    out = gs(f"sessions show {td_session['id']}").stdout
    assert "True" not in out and "False" not in out and "['" not in out and "None" not in out


def test_costs_total_is_the_last_row_of_the_table(td_session, gs):
    result = gs("costs")
    last = result.stdout.rstrip().splitlines()[-1].split()
    assert last[0] == "total" and re.fullmatch(r"\d+\.\d{4}", last[-1])
    assert "Total" not in result.stderr


def test_column_widths_wrap_headers_then_words_and_cut_ids_last():
    headers = ["OFFER", "GPU", "DISK GB"]
    cells = [["tensordock:1234abcd"], ["RTX 4090"], ["100"]]
    words = [True, False, True]
    assert column_widths(headers, cells, words, 80) == [19, 8, 7]
    assert column_widths(headers, cells, words, 35) == [19, 8, 4]  # "DISK / GB"
    assert column_widths(headers, cells, words, 31) == [19, 4, 4]  # "RTX / 4090"
    narrow = column_widths(headers, cells, words, 20)
    assert narrow[0] == 19 - (sum(narrow) + 4 - 20) or narrow[1:] == [1, 1]


# -- prefixes -------------------------------------------------------------------------------
def test_short_ids_are_unique_prefixes_with_a_minimum():
    ids = ["tensordock:aaaa1111-x:gpu", "tensordock:aaaa1112-x:gpu", "tensordock:bbbb0000-y:gpu"]
    short = short_ids(ids, minimum=19)
    assert short[ids[2]] == "tensordock:bbbb0000"
    assert short[ids[0]] == "tensordock:aaaa1111" and short[ids[1]] == "tensordock:aaaa1112"
    assert len(set(short.values())) == 3
    assert short_ids(["abc"], minimum=8) == {"abc": "abc"}
    # unique among the known ones too, not only those shown
    assert short_ids([ids[0]], known=ids, minimum=12)[ids[0]] == "tensordock:aaaa1111"


def test_match_prefix_exact_unique_ambiguous_short():
    known = ["3fa9c2", "3fb000", "77aa00"]
    assert match_prefix("3fa9c2", known, "session") == "3fa9c2"
    assert match_prefix("3fa", known, "session") == "3fa9c2"
    assert match_prefix("3f", known, "session") is None  # too short to guess from
    assert match_prefix("999", known, "session") is None
    with pytest.raises(AmbiguousId) as err:
        match_prefix("3f", ["3f0000", "3f1111"], "session", floor=-1)
    assert err.value.exit_code == 2 and "3f0000, 3f1111" in str(err.value)


def test_offer_prefixes_for_long_ids_only():
    known = ["tensordock:aaaa1111-x:gpu", "tensordock:aaaa2222-x:gpu"]
    assert resolve_offer_id("tensordock:aaaa1", lambda p: known) == known[0]
    with pytest.raises(AmbiguousId):
        resolve_offer_id("tensordock:aaaa", lambda p: known)
    # a Vast.ai ask is a number: a shorter number is another ask, never a prefix
    assert resolve_offer_id("vastai:100", lambda p: ["vastai:1000001"]) == "vastai:100"


def _seed(home, sessions: list[str], jobs: list[str] = ()) -> None:
    store = StateStore(home / "state.json")
    for sid in sessions:
        store.put_session(
            Session.from_record(
                {"id": sid, "status": "ended", "provider": "vastai", "price_per_hour": 0.5}
            )
        )
    with store.transaction() as state:
        state.setdefault("jobs", {})
        for jid in jobs:
            state["jobs"][jid] = {"id": jid, "status": "succeeded", "session_id": sessions[0]}


def test_session_and_job_prefixes_everywhere(gs, isolated_home):
    _seed(isolated_home, ["abc111", "abc222", "def333"], ["j0a0a0a", "j0a0b0b"])
    shown = gs("sessions show abc1 --json")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["id"] == "abc111"  # JSON keeps the whole id
    ambiguous = gs("sessions show abc --json")
    assert ambiguous.exit_code == 2
    assert ambiguous.json()["error"]["type"] == "ambiguous_id"
    assert "abc111, abc222" in ambiguous.stderr
    for command in (
        "sessions done abc",
        "shutdown abc",
        "sessions extend abc --hours 1",
        "transfer download abc /x .",
        "costs --session abc",
    ):
        result = gs(command)
        assert result.exit_code == 2 and "ambiguous" in result.stderr, command
    unknown = gs("sessions show zzz999")
    assert unknown.exit_code == 2 and "no session 'zzz999'" in unknown.stderr
    assert gs("costs --session def --json").json()["sessions"][0]["session_id"] == "def333"
    assert gs("jobs show j0a0a --json").json()["id"] == "j0a0a0a"
    job = gs("jobs show j0a0")
    assert job.exit_code == 2 and "j0a0a0a, j0a0b0b" in job.stderr


def test_columns_is_honoured_both_ways(td_session, gs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    check_fits(gs("sessions").stdout, 60)
    check_fits(gs("inventory --gpu 4090").stdout, 60)
    monkeypatch.setenv("COLUMNS", "250")
    wide = gs("config list").stdout
    assert max(len(line) for line in wide.splitlines()) > 80  # not folded to 80 regardless
    check_fits(wide, 250)


def test_too_narrow_cuts_an_id_on_its_line_never_folds_it(capsys, monkeypatch):
    from gpushopper.cli.output import print_table

    monkeypatch.setenv("COLUMNS", "20")
    ident = "tensordock:0123456789abcdef0123"
    print_table(["OFFER", "GPU"], [(ident, "RTX 4090")])
    lines = check_fits(capsys.readouterr().out, 20)
    (row,) = [line for line in lines if line.startswith("tensordock")]
    assert "…" in row  # cut with an ellipsis on one line...
    assert not any(line.strip().startswith(("01", "ab", "23")) for line in lines)  # ...not folded


# -- the plain writer -----------------------------------------------------------------------
def _random_text(rng, words: bool) -> str:
    """A cell as providers and our own values make them: ids, numbers, names with spaces,
    long words, leading and doubled spaces, several lines, empty."""
    pieces = ["", "-", "0.383", "RTX 4090", "tensordock:0123456789abcdef0123", "a  b", " x"]
    pieces += ["NVIDIA GeForce RTX 4090", "line one\nline two", "2026-09-27 01:03", "yes "]
    pieces += ["".join(rng.choice("abc-:/.") for _ in range(rng.randrange(1, 40)))]
    text = " ".join(rng.choice(pieces) for _ in range(rng.randrange(1, 4)))
    return text.replace(" ", "").replace("\n", "") if words else text


def test_plain_tables_are_what_rich_prints(monkeypatch):
    """Off a terminal the table is written without rich: character for character what
    rich printed (wrapping, ellipsis, right-justified numbers, titles, totals)."""
    import random

    from gpushopper.cli.output import _Layout, _plain_table, _plain_will_do, _rich_table

    monkeypatch.setenv("NO_COLOR", "1")
    rng = random.Random(13)
    compared = 0
    for _ in range(400):
        n = rng.randrange(1, 7)
        words = [rng.random() < 0.5 for _ in range(n)]
        headers = [
            rng.choice(["OFFER", "GPU", "DISK GB", "$/H PER UNIT", "#", "WHEN"]) for _ in words
        ]
        rows = [[_random_text(rng, w) for w in words] for _ in range(rng.randrange(1, 6))]
        totals = [_random_text(rng, w) for w in words] if rng.random() < 0.3 else None
        cells = [[r[i] for r in rows] + ([totals[i]] if totals else []) for i in range(n)]
        width = rng.randrange(n * 3, 130)
        title = rng.choice([None, "gpu-matmul@1: tflops_bf16, cheapest per unit first"])
        layout = _Layout(
            headers=headers,
            rows=rows,
            totals=totals,
            widths=column_widths(headers, cells, words, width),
            words=words,
            right=[rng.random() < 0.4 for _ in words],
            title=title,
        )
        if not _plain_will_do(layout, width):
            continue
        monkeypatch.setenv("COLUMNS", str(width))
        assert _plain_table(layout) == _rich_table(layout), layout
        compared += 1
    assert compared > 300


def test_a_piped_table_loads_no_rich(gs, isolated_home):
    """A table off a terminal is plain text: rich (~30 ms to import and render) stays out."""
    _seed(isolated_home, ["abc111", "def333"])
    code = (
        "import sys; from gpushopper.cli import cli; "
        "from gpushopper.cli.output import run; code = run(cli, ['sessions', '--all']); "
        "print('LOADED:' + ('rich' if 'rich' in sys.modules else '') + f' {code}')"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "abc111" in out.stdout, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED: 0", out.stderr
