"""The round book: which update announcements of ONE round a peer accepts, fetches and includes.

The DHT layer checks signatures and hands the book already-verified :class:`UpdateAnnouncement`
values. The book applies the protocol's rules and keeps counters of everything it refused:

* wrong run, stale or future round, wrong base-state hash, unexpected codec;
* size over the cap, implausible work (``steps > max_inner_steps`` or
  ``samples != steps * batch_size``);
* **copy**: the same payload digest announced by two different peers. Both are dropped for the
  round: the book cannot tell author from copier, and the batch assignment makes the true author
  the only one whose spot check reproduces the update, so verification settles it later. The cost
  to an honest victim is one round's contribution; the copier gains nothing.
* **equivocation**: one peer announcing two different digests in one round. Every update of that
  peer is dropped for the round.

Copy and equivocation are decided on the *set* of announcements seen, so the resulting inclusion
is the same whatever order the announcements arrived in (replicated state, I1). ``offer`` answers
``Accepted`` provisionally; a later announcement can still disqualify it.

Late updates: after :meth:`RoundBook.close` the book refuses new offers (reason ``late``). The
driver may offer such an update of round ``r`` to round ``r+1``'s book, which accepts it with
``limits.stale_discount`` if the run allows it (``limits.allow_stale``) and its base is round
``r``'s base (``prev_base_hash``); otherwise it is dropped and counted. Nothing ever waits.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from dai_swarm.dht.wire import MAX_NEED_S
from dai_swarm.errors import (
    ConfigError,
    DigestMismatch,
    MalformedRecord,
    PayloadTooLarge,
    ProtocolError,
    StaleRound,
    SwarmError,
    UnknownCodec,
    WrongBase,
)

__all__ = ["MAX_NEED_S", "Accepted", "BookLimits", "Rejected", "RoundBook", "UpdateAnnouncement"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^(?:[0-9a-f]{2})+$")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class UpdateAnnouncement:
    """A signed update announcement (I3), already signature-checked by the DHT layer.

    ``peer`` is the author's public key in hex, ``digest`` the lowercase hex SHA-256 of the encoded
    payload, ``base_hash`` the state hash of the base the update was computed from. Field types are
    checked on construction and raise :class:`~dai_swarm.errors.MalformedRecord`.
    """

    run_id: str
    round: int
    base_hash: str
    peer: str
    steps: int
    samples: int
    codec: str
    digest: str
    size_bytes: int
    region: str = ""
    need_s: float | None = None  # the round length the author measured it needs (optim/schedule.py)
    ef: Any = None  # sparse runs: the FeedbackCommit (optim/feedback_chain.py) the update carries

    def __post_init__(self) -> None:
        for name in ("run_id", "codec", "region"):
            if not isinstance(getattr(self, name), str):
                raise MalformedRecord(f"{name} must be a string")
        if not self.run_id or not self.codec:
            raise MalformedRecord("run_id and codec must be non-empty")
        for name in ("round", "steps", "samples", "size_bytes"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise MalformedRecord(f"{name} must be a non-negative int, got {v!r}")
        for name in ("base_hash", "digest"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _HEX64.match(v):
                raise MalformedRecord(f"{name} must be 64 lowercase hex characters")
        if not isinstance(self.peer, str) or not _HEX.match(self.peer) or len(self.peer) > 256:
            raise MalformedRecord("peer must be a lowercase hex public key")
        if self.need_s is not None and (isinstance(self.need_s, bool) or not isinstance(self.need_s, (int, float))
                                        or not 0.0 <= self.need_s <= MAX_NEED_S):
            raise MalformedRecord(f"need_s must be a number of seconds in [0, {MAX_NEED_S:g}], got {self.need_s!r}")


@dataclass(frozen=True)
class Accepted:
    """``offer`` took the announcement (provisionally: copy/equivocation may still drop it).

    ``discount`` is 1.0 for an update of this round and ``stale_discount`` for a late one.
    ``duplicate`` is True when the very same announcement had already been offered.
    """

    digest: str
    discount: float = 1.0
    duplicate: bool = False


@dataclass(frozen=True)
class Rejected:
    """``offer`` refused the announcement: ``reason`` is a short counter key, ``error`` its type."""

    reason: str
    error: type[SwarmError]
    detail: str = ""

    def exception(self) -> SwarmError:
        """An instance of :attr:`error` carrying the reason, for callers that prefer raising."""
        return self.error(f"{self.reason}: {self.detail}" if self.detail else self.reason)


@dataclass(frozen=True)
class BookLimits:
    """Per-run limits a round book enforces (from the run manifest).

    ``codecs`` is the set of acceptable codec ids (None: any). ``allow_stale`` lets a late update
    of round ``r`` count in round ``r+1`` with weight factor ``stale_discount`` in ``(0, 1]``.
    """

    max_inner_steps: int
    batch_size: int
    max_payload_bytes: int
    codecs: frozenset[str] | None = None
    allow_stale: bool = False
    stale_discount: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_inner_steps", "batch_size", "max_payload_bytes"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
        if self.codecs is not None:
            object.__setattr__(self, "codecs", frozenset(self.codecs))
        if not isinstance(self.stale_discount, (int, float)) or not 0.0 < self.stale_discount <= 1.0:
            raise ConfigError(f"stale_discount must be in (0, 1], got {self.stale_discount!r}")


class RoundBook:
    """The update announcements of one round, their fetch status and the resulting inclusion.

    ``prev_base_hash`` is the base of round ``round - 1``; with ``limits.allow_stale`` a late update
    of that round built on it is accepted at a discount. Not thread-safe; holds no I/O.
    """

    def __init__(self, run_id: str, round: int, base_hash: str, *, limits: BookLimits,
                 prev_base_hash: str | None = None) -> None:
        if not isinstance(run_id, str) or not run_id:
            raise ConfigError("run_id must be a non-empty string")
        if not _is_int(round) or round < 0:
            raise ConfigError(f"round must be an int >= 0, got {round!r}")
        for name, v in (("base_hash", base_hash), ("prev_base_hash", prev_base_hash)):
            if v is not None and (not isinstance(v, str) or not _HEX64.match(v)):
                raise ConfigError(f"{name} must be 64 lowercase hex characters")
        if base_hash is None:
            raise ConfigError("base_hash is required")
        self.run_id, self.round, self.base_hash = run_id, round, base_hash
        self.prev_base_hash = prev_base_hash
        self.limits = limits
        self.closed = False
        self._anns: dict[tuple[str, str], UpdateAnnouncement] = {}
        self._discount: dict[str, float] = {}
        self._peers_of: dict[str, set[str]] = {}
        self._digests_of: dict[str, set[str]] = {}
        self._fetched: dict[str, tuple[bool, str]] = {}
        self._retired: set[str] = set()
        self._adopted: tuple[str, ...] | None = None
        self._rejections: Counter[str] = Counter()

    # -- intake ---------------------------------------------------------------------------
    def _reject(self, reason: str, error: type[SwarmError], detail: str = "") -> Rejected:
        self._rejections[reason] += 1
        return Rejected(reason, error, detail)

    def _check(self, a: UpdateAnnouncement) -> Rejected | float:
        lim = self.limits
        if a.run_id != self.run_id:
            return self._reject("wrong_run", ProtocolError, a.run_id)
        if a.round == self.round:
            if a.base_hash != self.base_hash:
                return self._reject("wrong_base", WrongBase, a.base_hash)
            discount = 1.0
        elif a.round == self.round - 1 and lim.allow_stale and self.prev_base_hash is not None:
            if a.base_hash != self.prev_base_hash:
                return self._reject("wrong_base", WrongBase, a.base_hash)
            discount = float(lim.stale_discount)
        elif a.round > self.round:
            return self._reject("future_round", StaleRound, f"round {a.round} > {self.round}")
        else:
            return self._reject("stale_round", StaleRound, f"round {a.round} < {self.round}")
        if lim.codecs is not None and a.codec not in lim.codecs:
            return self._reject("wrong_codec", UnknownCodec, a.codec)
        if a.size_bytes > lim.max_payload_bytes or a.size_bytes == 0:
            return self._reject("too_large" if a.size_bytes else "empty", PayloadTooLarge, str(a.size_bytes))
        if a.steps < 1 or a.steps > lim.max_inner_steps:
            return self._reject("implausible_steps", ProtocolError, str(a.steps))
        if a.samples != a.steps * lim.batch_size:
            return self._reject("implausible_samples", ProtocolError, f"{a.samples} != {a.steps}*{lim.batch_size}")
        if a.codec == "sparse" and a.ef is None:  # error feedback a verifier cannot check
            return self._reject("no_feedback_commit", ProtocolError, "sparse update without ef")
        return discount

    def offer(self, a: UpdateAnnouncement) -> Accepted | Rejected:
        """Take or refuse one verified announcement; refusals are counted by reason.

        After :meth:`close` only announcements whose digest is in an adopted inclusion are taken.
        """
        if not isinstance(a, UpdateAnnouncement):
            return self._reject("malformed", MalformedRecord, type(a).__name__)
        if self.closed and (self._adopted is None or a.digest not in self._adopted):
            return self._reject("late", StaleRound, a.digest)
        checked = self._check(a)
        if isinstance(checked, Rejected):
            return checked
        key = (a.peer, a.digest)
        if key in self._anns:
            if self._anns[key] != a:  # same peer+digest, different claims: equivocation too
                digests = self._digests_of[a.peer]
                digests.add("conflict:" + a.digest)
                self._rejections["equivocation"] += 2 if len(digests) == 2 else 1
                return Rejected("equivocation", ProtocolError, a.peer)
            return Accepted(a.digest, self._discount[a.digest], duplicate=True)
        self._anns[key] = a
        self._discount.setdefault(a.digest, checked)
        self._discount[a.digest] = min(self._discount[a.digest], checked)
        peers = self._peers_of.setdefault(a.digest, set())
        digests = self._digests_of.setdefault(a.peer, set())
        peers.add(a.peer)
        digests.add(a.digest)
        if len(peers) == 2:
            self._rejections["copy"] += 2
        elif len(peers) > 2:
            self._rejections["copy"] += 1
        if len(digests) == 2:
            self._rejections["equivocation"] += 2
        elif len(digests) > 2:
            self._rejections["equivocation"] += 1
        if len(peers) > 1:
            return Rejected("copy", ProtocolError, a.digest)
        if len(digests) > 1:
            return Rejected("equivocation", ProtocolError, a.peer)
        return Accepted(a.digest, checked)

    def offer_many(self, anns: Iterable[UpdateAnnouncement]) -> list[Accepted | Rejected]:
        """``offer`` each announcement in turn."""
        return [self.offer(a) for a in anns]

    # -- fetch ----------------------------------------------------------------------------
    def _eligible(self, digest: str) -> bool:
        peers = self._peers_of.get(digest)
        if not peers or len(peers) != 1 or digest in self._retired:
            return False
        (peer,) = peers
        return len(self._digests_of[peer]) == 1

    def to_fetch(self) -> tuple[str, ...]:
        """Sorted digests that are eligible (or adopted) and not fetched yet."""
        wanted = self._adopted if self._adopted is not None else [d for d in self._peers_of if self._eligible(d)]
        return tuple(sorted(d for d in wanted if d in self._peers_of and d not in self._fetched))

    def mark_fetched(self, digest: str, ok: bool, reason: str = "") -> bool:
        """Record the outcome of fetching and checking a payload; False if the digest is unknown.

        ``ok=False`` (digest mismatch, corrupt or non-finite payload...) excludes the update and
        counts ``reason`` (default ``bad_payload``).
        """
        if digest not in self._peers_of or digest in self._fetched:
            return False
        self._fetched[digest] = (bool(ok), reason)
        if not ok:
            self._rejections[reason or "bad_payload"] += 1
        return True

    def retire(self, digests: Iterable[str], reason: str = "counted_earlier") -> int:
        """Exclude digests already counted in another round (e.g. a late update that the previous
        round's winning vote included after all). Returns how many known digests were retired."""
        n = 0
        for d in digests:
            if d in self._peers_of and d not in self._retired:
                self._retired.add(d)
                self._rejections[reason] += 1
                n += 1
        return n

    # -- close, inclusion, adoption --------------------------------------------------------
    def close(self) -> tuple[str, ...]:
        """Close the round locally (no more offers) and return the local inclusion."""
        self.closed = True
        return self.inclusion()

    def inclusion(self) -> tuple[str, ...]:
        """Sorted digests that count: eligible, fetched and valid; or the adopted set if any."""
        if self._adopted is not None:
            return self._adopted
        return tuple(sorted(d for d, (ok, _) in self._fetched.items() if ok and self._eligible(d)))

    def adopt(self, inclusion: Iterable[str]) -> tuple[str, ...]:
        """Replace the local inclusion by the swarm's winning one (minority peer).

        Returns the sorted digests whose announcement the book has not seen yet: the driver fetches
        those announcements (they are DHT records) and offers them; they are taken even though the
        book is closed. Check :attr:`ready` before computing the state.
        """
        adopted = tuple(sorted(set(inclusion)))
        if any(not isinstance(d, str) or not _HEX64.match(d) for d in adopted):
            raise MalformedRecord("inclusion must hold 64-hex digests")
        self._adopted = adopted
        return tuple(d for d in adopted if d not in self._peers_of)

    @property
    def ready(self) -> bool:
        """True when every digest of :meth:`inclusion` is known and fetched successfully."""
        return all(self._fetched.get(d, (False, ""))[0] for d in self.inclusion())

    def included(self) -> tuple[tuple[UpdateAnnouncement, float], ...]:
        """(announcement, discount) for each included digest, sorted by digest.

        For a copied digest that the swarm adopted anyway, the smallest peer id is reported.
        Raises :class:`~dai_swarm.errors.DigestMismatch` if an included digest is not ready.
        """
        out = []
        for d in self.inclusion():
            if not self._fetched.get(d, (False, ""))[0]:
                raise DigestMismatch(f"included digest {d} is not fetched and valid")
            peer = min(self._peers_of[d])
            out.append((self._anns[(peer, d)], self._discount[d]))
        return tuple(out)

    def announced(self) -> tuple[UpdateAnnouncement, ...] | None:
        """The announcement behind each digest of :meth:`inclusion` (fetched or not), sorted by
        digest; None while one of them was never announced to this book. A peer that downloaded
        the agreed state credits the round's contributors from these (its payloads may be missing)."""
        if any(d not in self._peers_of for d in self.inclusion()):
            return None
        return tuple(self._anns[(min(self._peers_of[d]), d)] for d in self.inclusion())

    def digests(self) -> frozenset[str]:
        """Every digest announced to this book, accepted or later disqualified (for pruning)."""
        return frozenset(self._peers_of)

    @property
    def rejections(self) -> dict[str, int]:
        """Counts of refused announcements/payloads by reason (a copy of the counters)."""
        return dict(self._rejections)
