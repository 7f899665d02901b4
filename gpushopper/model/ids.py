"""Ids as people type and read them: unique prefixes, like git's short hashes.

Tables show the shortest prefix that no other known id shares (never shorter than a
minimum); every command that takes a session, job or offer id accepts such a prefix.
This is the one resolver: core (sessions, jobs) and the CLI (offers) call it."""

from __future__ import annotations

from collections.abc import Iterable

from gpushopper.model.errors import UsageError

# A prefix shorter than this is never guessed at: "sessions done 3" must not destroy
# whichever session happens to start with a 3.
MIN_PREFIX = 3


class AmbiguousId(UsageError):
    """A prefix more than one known id starts with: exit 2, naming the candidates."""

    type = "ambiguous_id"

    def __init__(self, kind: str, given: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
        super().__init__(
            f"{kind} id {given!r} is ambiguous: {len(candidates)} match ({shown}); "
            "give more characters"
        )
        self.candidates = candidates


def match_prefix(given: str, known: Iterable[str], kind: str, floor: int = 0) -> str | None:
    """The one known id ``given`` names: itself when known, else the only known id it is
    a prefix of (at least ``MIN_PREFIX`` characters past ``floor``). None when nothing
    matches; :class:`AmbiguousId` when several do."""
    ids = [k for k in dict.fromkeys(known) if isinstance(k, str)]
    if given in ids:
        return given
    if len(given) - floor < MIN_PREFIX:
        return None
    found = sorted(k for k in ids if k.startswith(given))
    if len(found) > 1:
        raise AmbiguousId(kind, given, found)
    return found[0] if found else None


def short_ids(ids: Iterable[str], known: Iterable[str] = (), minimum: int = 8) -> dict[str, str]:
    """Each of ``ids`` -> its shortest prefix (at least ``minimum`` characters) that no
    other id of ``ids`` or ``known`` starts with; the whole id when none is shorter."""
    from bisect import bisect_left
    from os.path import commonprefix

    shown = list(dict.fromkeys(ids))
    universe = sorted(set(shown) | {k for k in known if isinstance(k, str)})
    out: dict[str, str] = {}
    for ident in shown:
        # In sorted order the id sharing the longest prefix is a neighbour.
        at = bisect_left(universe, ident)
        neighbours = [universe[i] for i in (at - 1, at + 1) if 0 <= i < len(universe)]
        common = max((len(commonprefix([ident, n])) for n in neighbours), default=0)
        out[ident] = ident[: max(minimum, common + 1)]
    return out
