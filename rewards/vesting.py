"""Vesting: a round's reward units stay *pending* until no verdict can still forfeit them.

Pure and integer-only, like :mod:`.rules`. The state of the vesting lives in the replicated
metadata of each base (``extra["vesting"]``, hashed with the tensors), so every honest peer, a
peer that joined mid-run and a peer that resumed from an export all hold the same pending units
and write the same round records (docs/design.md "Vesting").

:func:`settle` is the transition of one round ``q`` (the base of ``q + 2``):

1. **Forfeit.** Every peer slashed in the new state loses all its pending and held units and its
   award of round ``q`` (``forfeited``). Units that vested earlier are never clawed back.
2. **Award.** The units of round ``q`` (contributor reward + verifier credit, from
   :func:`.rules.compute_round_record`) become pending under round ``q``.
3. **Vest.** Pending units of every round ``r <= q - window`` leave the window: the verdicts about
   round ``r`` have all taken effect by now. They vest for a peer with *standing* (a founder or a
   key with a verified pass, not slashed); a peer without standing keeps them *held* until it
   earns standing (then they vest) or is slashed (forfeited) or ``max_hold_rounds`` pass since
   its oldest held units (forfeited: the state must not grow with every fresh key that ever
   earned a unit). ``standing=None`` (a run without verification) vests everything.

The section::

    {"window": W, "max_hold": H,
     "pending": {"<round>": {peer: units}},      # rounds whose window is still open
     "held": {peer: [units, since_round]},       # window closed, waiting for standing
     "now": {"round": q, "pending": {...}, "vested": {...}, "forfeited": {...}}}

``now`` is what the round record of ``q`` carries (:func:`record_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

from dai_swarm.errors import LedgerError

__all__ = ["DEFAULT_MAX_HOLD_ROUNDS", "SECTION", "Settlement", "awards_of", "pending_of", "record_fields",
           "settle"]

#: key of the vesting section in a base's replicated metadata
SECTION = "vesting"
#: rounds a peer without standing may keep closed-window units before they are forfeited
DEFAULT_MAX_HOLD_ROUNDS = 50


@dataclass(frozen=True)
class Settlement:
    """The outcome of one round's vesting: the new section and this round's per-peer figures."""

    section: dict
    pending: dict[str, int]
    vested: dict[str, int]
    forfeited: dict[str, int]


def _units(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LedgerError(f"vesting: {what} must be a non-negative int, got {value!r}")
    return value


def _peer_units(table: object, what: str) -> dict[str, int]:
    if not isinstance(table, Mapping):
        raise LedgerError(f"vesting: {what} must be a mapping of peer -> units")
    out = {}
    for peer, units in table.items():
        if not isinstance(peer, str) or not peer:
            raise LedgerError(f"vesting: {what} has a bad peer id {peer!r}")
        out[peer] = _units(units, f"{what}[{peer[:12]}]")
    return out


def _load(section: Mapping | None) -> tuple[dict[int, dict[str, int]], dict[str, list[int]]]:
    """Pending per round and held per peer from a section (empty for None); LedgerError if malformed."""
    if not section:
        return {}, {}
    if not isinstance(section, Mapping):
        raise LedgerError("vesting: the section must be a mapping")
    pending: dict[int, dict[str, int]] = {}
    for r, table in dict(section.get("pending", {})).items():
        if not isinstance(r, str) or not r.isdigit():
            raise LedgerError(f"vesting: pending round key must be decimal digits, got {r!r}")
        pending[int(r)] = _peer_units(table, f"pending[{r}]")
    held: dict[str, list[int]] = {}
    for peer, entry in dict(section.get("held", {})).items():
        if not isinstance(peer, str) or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise LedgerError(f"vesting: held entry of {peer!r} must be [units, since_round]")
        held[peer] = [_units(entry[0], "held units"), _units(entry[1], "held since")]
    return pending, held


def _add(table: dict[str, int], peer: str, units: int) -> None:
    if units > 0:
        table[peer] = table.get(peer, 0) + units


def settle(section: Mapping | None, round_no: int, awards: Mapping[str, int], slashed: Iterable[str],
           standing: Collection[str] | None, *, window: int, max_hold_rounds: int = DEFAULT_MAX_HOLD_ROUNDS
           ) -> Settlement:
    """Vesting transition of round ``round_no`` (see the module docstring).

    ``section`` is the previous base's ``extra["vesting"]`` (None at the start of a run),
    ``awards`` the units round ``round_no`` earned per peer, ``slashed`` the keys slashed in the
    new state, ``standing`` the keys with standing in it (None: no verification, everyone
    vests), ``window`` the rounds a unit stays pending (``lag + 1``). Pure, deterministic,
    integer-only; the order of the inputs does not matter. Raises :class:`LedgerError` on
    malformed input.
    """
    if not isinstance(round_no, int) or isinstance(round_no, bool) or round_no < 0:
        raise LedgerError(f"vesting: round must be a non-negative int, got {round_no!r}")
    window, max_hold_rounds = _units(window, "window"), _units(max_hold_rounds, "max_hold_rounds")
    awards = _peer_units(awards, "awards")
    slashed_set = set(slashed)
    pending, held = _load(section)
    if any(r > round_no for r in pending):
        raise LedgerError(f"vesting: pending units of a round after {round_no}")
    forfeited: dict[str, int] = {}
    for peer in sorted(slashed_set):  # 1. forfeit everything a slashed key has not vested yet
        for r in sorted(pending):
            _add(forfeited, peer, pending[r].pop(peer, 0))
        _add(forfeited, peer, held.pop(peer, [0, 0])[0])
        _add(forfeited, peer, awards.pop(peer, 0))
    now = {p: u for p, u in sorted(awards.items()) if u > 0}  # 2. this round's units become pending
    if now:
        pending[round_no] = dict(now)
    vested: dict[str, int] = {}
    for r in sorted(x for x in pending if x <= round_no - window):  # 3. windows that closed now
        for peer, units in sorted(pending.pop(r).items()):
            if standing is None or peer in standing:
                _add(vested, peer, units)
            elif peer in held:
                held[peer][0] += units
            else:
                held[peer] = [units, r]
    for peer in sorted(held):  # held units vest once the key earns standing, or expire
        units, since = held[peer]
        if standing is None or peer in standing:
            _add(vested, peer, units)
            del held[peer]
        elif round_no - since > max_hold_rounds:
            _add(forfeited, peer, units)
            del held[peer]
    out = {
        "window": window, "max_hold": max_hold_rounds,
        "pending": {str(r): dict(sorted(t.items())) for r, t in sorted(pending.items()) if t},
        "held": {p: held[p] for p in sorted(held) if held[p][0] > 0},
        "now": {"round": round_no, "pending": now, "vested": dict(sorted(vested.items())),
                "forfeited": dict(sorted(forfeited.items()))},
    }
    return Settlement(out, now, out["now"]["vested"], out["now"]["forfeited"])


def awards_of(body: Mapping) -> dict[str, int]:
    """Units per peer a round record body (:func:`.rules.compute_round_record`) awards: reward + credit."""
    out: dict[str, int] = {}
    for row in body.get("contributors", ()):
        _add(out, row["peer"], int(row["reward"]))
    for row in body.get("verifiers", ()):
        _add(out, row["peer"], int(row["credit"]))
    return out


def pending_of(section: Mapping | None) -> dict[str, int]:
    """Units per peer not vested yet in a section: pending in open windows plus held."""
    pending, held = _load(section)
    out: dict[str, int] = {}
    for r in sorted(pending):
        for peer, units in pending[r].items():
            _add(out, peer, units)
    for peer, (units, _) in held.items():
        _add(out, peer, units)
    return dict(sorted(out.items()))


def record_fields(section: Mapping | None, round_no: int) -> dict:
    """The vesting fields of round ``round_no``'s record from the section its settlement produced:
    ``pending`` (units awarded this round, not vested), ``vested`` and ``forfeited`` (this round's),
    ``unvested`` (every peer's units still pending or held after it) and ``window``.
    Raises :class:`LedgerError` if the section is not that round's."""
    now = section.get("now") if isinstance(section, Mapping) else None
    if not isinstance(now, Mapping) or now.get("round") != round_no:
        raise LedgerError(f"vesting: the state holds no settlement of round {round_no}")
    return {"pending": _peer_units(now.get("pending", {}), "pending"),
            "vested": _peer_units(now.get("vested", {}), "vested"),
            "forfeited": _peer_units(now.get("forfeited", {}), "forfeited"),
            "unvested": pending_of(section), "window": _units(section.get("window"), "window")}
