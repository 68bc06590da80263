"""``SwarmDHT``: one hivemind DHT node with dai_swarm's signed records on top.

It starts ``hivemind.DHT`` with our :class:`~dai_swarm.dht.validator.SwarmRecordValidator` (so
honest nodes refuse forged, moved, replayed and oversized stores), a stable libp2p identity kept
beside the ed25519 key, and a tiny echo handler used to measure RTTs for regions. Every read is
verified again here, because values can come from nodes that run no validator.

``DHT.store()``'s boolean reflects whichever replica answered last, so it is returned for
information only: it is not an acknowledgement (SPEC §10).

Every request to the DHT process has a deadline (:class:`~dai_swarm.dht.pipe.DHTPipe`): reads and
writes that traverse the network get ``request_timeout_s`` (default: 5 x hivemind's per-RPC
``wait_timeout``), requests about this node alone ``LOCAL_TIMEOUT_S``. :meth:`SwarmDHT.shutdown`
fails pending requests at once and is bounded: it asks the DHT process to stop, then terminates and
finally kills it and its p2pd, and joins it, so multiprocessing's exit handler has nothing to wait
for. Live nodes are shut down at interpreter exit, before that handler runs.
"""

from __future__ import annotations

import atexit
import collections
import time
import weakref
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import hivemind
from pydantic import ValidationError
from hivemind.p2p import P2P

from ..errors import BootstrapError, ConfigError, DHTClosed, IdentityError, MalformedRecord
from ..identity import Identity
from ..logging import get_logger
from . import _proc
from .envelope import EnvelopeCache, SignedRecord, open_envelope, seal
from .keys import SIGNER_KEYED, manifest_key, peers_key, regions_key, round_key
from .manifest import ManifestChoice, check_pin, select_manifest
from .pipe import DHTPipe
from .records import PeerRecord, RegionMembership, RoundRecord, RunManifest, validate_maddr, validate_name
from .startup import check_p2p_identity, parse_initial_peers, refused_everywhere  # noqa: F401 (re-exported)
from .transport import DHTProcess
from .validator import REASONS, SwarmRecordValidator, open_dictionary
from .wire import wire_kind

__all__ = ["DEFAULT_HOST_MADDRS", "SwarmDHT", "parse_initial_peers"]

logger = get_logger(__name__)
DEFAULT_HOST_MADDRS = ("/ip4/127.0.0.1/tcp/0",)
#: a busy initial peer may miss hivemind's 3 s bootstrap ping: start again (pauses 2, 4, then 5 s) while
#: the start deadline leaves 5 s (3 tries in 8 s were too few for 3 peers on 2 loaded cores)
BOOTSTRAP_ATTEMPTS = 8
#: start-up errors that a busy initial peer causes (tried again while the start deadline allows): a
#: missed ping, and p2pd's own bootstrap connection (seen when the only initial peer was a loaded
#: founder on a 2-core host running two 8-peer swarms)
BUSY_PEER_ERRORS = ("responded to a ping", "failed to connect to bootstrap peers")
#: deadline of a request that only reads or changes this node's own state (no network round trip)
LOCAL_TIMEOUT_S = 10.0
#: network requests (get/store traverse the DHT with RPCs of ``wait_timeout`` each) get this many of them
RPC_TIMEOUTS_PER_REQUEST = 5
#: how long shutdown lets the DHT process stop by itself, then after SIGTERM, then after SIGKILL
SHUTDOWN_GRACE_S = (3.0, 2.0, 2.0)
_LIVE: "weakref.WeakSet[SwarmDHT]" = weakref.WeakSet()

#: Default deadline for a node to come up. Idle, a node starts in ~0.5 s; on a 2-core host beside
#: running 8-peer swarms a lone node's process (importing hivemind, starting p2pd) was measured past
#: 30 s, so the default leaves room for a busy home machine and still ends a hung start.
DHT_START_TIMEOUT_S = 60.0


class SwarmDHT:
    """A running DHT node for one peer; see the module docstring.

    ``initial_peers``: multiaddrs with ``/p2p/`` ids (empty: start a new swarm). ``validate=False``
    runs a node *without* our validator (for tests of what such a node keeps). Unreachable initial
    peers raise :class:`BootstrapError` within ``start_timeout_s`` (an unanswered bootstrap ping is
    retried up to ``BOOTSTRAP_ATTEMPTS`` times while time remains); malformed ones ConfigError.
    ``request_timeout_s`` is the deadline of each DHT read and write (default: 5 x hivemind's
    ``wait_timeout``, i.e. 15 s); a request past its deadline raises
    :class:`~dai_swarm.errors.DHTTimeout`, one during or after shutdown :class:`~dai_swarm.errors.DHTClosed`.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        initial_peers: Sequence[str] = (),
        host_maddrs: Sequence[str] = DEFAULT_HOST_MADDRS,
        announce_maddrs: Sequence[str] | None = None,
        start_timeout_s: float = DHT_START_TIMEOUT_S,
        client_mode: bool = False,
        validate: bool = True,
        request_timeout_s: float | None = None,
        **dht_kwargs,
    ):
        self._shut = True  # until started: shutdown() has nothing to do
        self.identity = identity
        self.initial_peers = parse_initial_peers(initial_peers)
        host_maddrs = [validate_maddr(m) for m in host_maddrs]
        announce = [validate_maddr(m) for m in announce_maddrs] if announce_maddrs else None
        check_p2p_identity(identity.p2p_identity_path)
        self._read_drops: collections.Counter = collections.Counter()
        self.read_bytes: collections.Counter = collections.Counter()  # record bytes read, per kind (control)
        self.ops: collections.Counter = collections.Counter()  # DHT reads and writes, "read.<kind>"/"write.<kind>"
        self._envelopes = EnvelopeCache()  # records verified once, not on every read
        self._pipe = DHTPipe(alive=lambda: getattr(self, "_dht", None) is None or self._dht.is_alive())
        self.request_timeout_s = float(request_timeout_s or RPC_TIMEOUTS_PER_REQUEST * dht_kwargs.get("wait_timeout", 3.0))
        validators = [SwarmRecordValidator()] if validate else []
        deadline = time.monotonic() + start_timeout_s
        for attempt in range(1, BOOTSTRAP_ATTEMPTS + 1):
            before = _proc.hivemind_sockets()
            self._dht = DHTProcess(
                initial_peers=self.initial_peers or None,
                start=False,
                host_maddrs=host_maddrs,
                announce_maddrs=announce,
                identity_path=identity.p2p_identity_path,
                record_validators=validators,
                client_mode=client_mode,
                **dht_kwargs,
            )
            try:
                self._dht.run_in_background(await_ready=True, timeout=max(1.0, deadline - time.monotonic()))
                break
            except BaseException as e:
                _proc.abort_process(self._dht, SHUTDOWN_GRACE_S[1:])
                _proc.remove_stale_sockets(_proc.hivemind_sockets() - before)
                if isinstance(e, KeyboardInterrupt):
                    raise  # Ctrl+C (or a stop signal) during start-up: not a bootstrap failure
                error = self._start_error(e, start_timeout_s)
                # a busy initial peer may miss the 3 s bootstrap ping: try again while time remains,
                # unless nothing listens at any of them (a mistyped or stale address: said at once)
                refused = refused_everywhere(self.initial_peers) if self.initial_peers else None
                if refused or not (self.initial_peers and any(m in str(e) for m in BUSY_PEER_ERRORS)
                                   and attempt < BOOTSTRAP_ATTEMPTS and deadline - time.monotonic() > 5.0):
                    raise (BootstrapError(f"could not reach any initial peer: {refused}") if refused else error) from e
                logger.warning("no initial peer answered the bootstrap ping (attempt %d of %d); retrying",
                               attempt, BOOTSTRAP_ATTEMPTS)
                time.sleep(min(2.0 * attempt, 5.0, max(0.0, deadline - time.monotonic() - 5.0)))
        self._shut = False
        self._sockets: list[str] = []
        _LIVE.add(self)
        try:
            self.peer_id: str = str(self._call(hivemind.DHT._get_peer_id, timeout_s=LOCAL_TIMEOUT_S))
            self._sockets = self._call(_proc.socket_paths, timeout_s=LOCAL_TIMEOUT_S)
            if not client_mode:
                self._call(_proc.register_ping, timeout_s=LOCAL_TIMEOUT_S)
        except BaseException:  # (a Ctrl+C here, before _sockets is known: remove the new stale ones too)
            self.shutdown()
            _proc.remove_stale_sockets(_proc.hivemind_sockets() - before)
            raise
        logger.debug("DHT node %s up at %s", self.peer_id, ", ".join(self.visible_maddrs))

    def _start_error(self, e: BaseException, timeout_s: float) -> Exception:
        text = f"{type(e).__name__}: {e}"
        if "already taken" in text:
            return IdentityError(f"this identity's peer id is already in use by a running peer ({e})")
        if isinstance(e, TimeoutError) or "TimeoutError" in text:
            return BootstrapError(f"DHT did not start within {timeout_s:.0f} s (initial peers: {self.initial_peers or 'none'})")
        if self.initial_peers:
            return BootstrapError(f"could not reach any initial peer {self.initial_peers}: {e}")
        return BootstrapError(f"DHT failed to start: {text}")

    # -- identity and transport ---------------------------------------------------------------
    @property
    def dht(self) -> hivemind.DHT:
        """The underlying ``hivemind.DHT`` (for raw access; its values are not verified)."""
        return self._dht

    @property
    def visible_maddrs(self) -> list[str]:
        """Multiaddrs (with ``/p2p/<peer id>``) other peers can use as ``--initial-peers``."""
        return self.maddrs(latest=False)

    def maddrs(self, latest: bool = True) -> list[str]:
        """This node's announced multiaddrs, asked from its p2p daemon now if ``latest`` (relay circuits appear later)."""
        return [str(m) for m in self._call(partial(hivemind.DHT._get_visible_maddrs, latest=latest),
                                           timeout_s=LOCAL_TIMEOUT_S)]

    async def replicate_p2p(self) -> P2P:
        """A hivemind ``P2P`` sharing this node's daemon, for payload exchange; await it in your loop."""
        if getattr(self._dht, "_p2p_replica", None) is None:
            maddr = self._call(hivemind.DHT._get_p2p_daemon_listen_maddr, timeout_s=LOCAL_TIMEOUT_S)
            self._dht._p2p_replica = await P2P.replicate(maddr)
        return self._dht._p2p_replica

    def ping(self, peer_id: str, timeout_s: float = 3.0, echoes: int = 3) -> float | None:
        """Median RTT in seconds of ``echoes`` 8-byte echoes to ``peer_id`` over P2P; None if unreachable."""
        # the coroutine waits up to timeout_s to connect and per echo; the request gets that plus slack
        return self._call(partial(_proc.ping_peer, peer_id=peer_id, timeout_s=timeout_s, echoes=echoes),
                          timeout_s=timeout_s * (max(1, echoes) + 1) + LOCAL_TIMEOUT_S)

    def routing_table_size(self) -> int:
        """How many DHT peers this node knows."""
        return self._call(_proc.routing_table_size, timeout_s=LOCAL_TIMEOUT_S)

    @property
    def counters(self) -> dict[str, int]:
        """Records dropped by reason (forged, expired, malformed, oversized), by the DHT and on read."""
        stored = self._call(_proc.validator_counters, timeout_s=LOCAL_TIMEOUT_S)
        out = {reason: int(stored.get(reason, 0)) + int(self._read_drops.get(reason, 0)) for reason in REASONS}
        out["accepted"] = int(stored.get("accepted", 0))
        return out

    # -- generic signed storage ----------------------------------------------------------------
    def _publish(self, record, run_id: str, ttl_s: float) -> bool:
        data = seal(self.identity, record, run_id=run_id, ttl_s=ttl_s)
        signed = open_envelope(data)
        self.ops["write." + (record.kind.split(".")[0] if isinstance(record, RoundRecord) else signed.record_type)] += 1
        return bool(
            self._store(signed.key, data, expiration_time=signed.expiration, subkey=self.identity.public_key_hex)
        )

    def _send(self, request: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Send one request to hivemind's DHT process (``request`` returns its future) through the shared
        pipe and return its answer within ``timeout_s`` (DHTTimeout after, DHTClosed on shutdown)."""
        if not self._dht.is_alive() and not self._pipe.closed:
            raise DHTClosed(f"{what}: the DHT process has exited (code {self._dht.exitcode})")
        return self._pipe.send(request, timeout_s, what)

    def _store(self, key: str, value: bytes, *, expiration_time: float, subkey: str,
               timeout_s: float | None = None) -> bool:
        """``hivemind.DHT.store`` through :meth:`_send` (deadline: ``request_timeout_s``)."""
        return self._send(lambda: self._dht.store(key, value, expiration_time=expiration_time, subkey=subkey,
                                                  return_future=True),
                          timeout_s or self.request_timeout_s, f"DHT store under {key}")

    def _call(self, coro, timeout_s: float | None = None):
        """``hivemind.DHT.run_coroutine`` through :meth:`_send` (deadline: ``request_timeout_s``)."""
        name = getattr(coro, "__name__", None) or getattr(getattr(coro, "func", None), "__name__", "coroutine")
        return self._send(lambda: self._dht.run_coroutine(coro, return_future=True),
                          timeout_s or self.request_timeout_s, f"DHT call {name}")

    def store_raw(self, key: str, subkey: str, value: bytes, expiration: float) -> bool:
        """Store arbitrary bytes under ``key``/``subkey`` (tests and attack simulations only)."""
        return bool(self._store(key, value, expiration_time=expiration, subkey=subkey))

    def _read(self, key: str, expected_type: str, run_id: str, label: str = "") -> list[SignedRecord]:
        self.ops["read." + (label or expected_type)] += 1
        found = self._send(lambda: self._dht.get(key, latest=True, return_future=True), self.request_timeout_s,
                           f"DHT get of {key}")
        return self._verified(key, found, expected_type, run_id, label)

    def _read_many(self, keys: Sequence[str], expected_type: str, run_id: str, label: str) -> list[SignedRecord]:
        """:meth:`_read` of several keys in one traversal (hivemind's ``get_many``)."""
        self.ops["read." + label] += 1
        found = self._call(partial(_proc.get_many, keys=list(keys))) if keys else {}
        return [s for k in keys for s in self._verified(k, found.get(k), expected_type, run_id, label)]

    def _verified(self, key: str, found: Any, expected_type: str, run_id: str, label: str) -> list[SignedRecord]:
        """The records of a DHT value read under ``key`` that pass every envelope check (drops counted)."""
        out, drops, size = open_dictionary(key, found, self._envelopes, expected_type, run_id)
        self._read_drops.update(drops)
        self.read_bytes[label or expected_type] += size
        return out

    # -- run manifest --------------------------------------------------------------------------
    def publish_manifest(self, manifest: RunManifest, ttl_s: float = 24 * 3600.0) -> bool:
        """Sign and store the run manifest (re-publish before ``ttl_s`` runs out)."""
        return self._publish(manifest, manifest.run_id, ttl_s)

    def get_manifest(self, run_id: str, signer: str | None = None, manifest_hash: str | None = None) -> RunManifest | None:
        """The run's manifest (see :mod:`~dai_swarm.dht.manifest`): the one whose hash starts with
        ``manifest_hash`` (:class:`ManifestPinMismatch` if others exist but none matches), else the
        earliest issued valid one; only records by ``signer`` if given. None if there is none."""
        choice = self.manifest_choice(run_id, signer=signer, manifest_hash=manifest_hash)
        return None if choice is None else choice.manifest

    def manifest_choice(self, run_id: str, signer: str | None = None,
                        manifest_hash: str | None = None) -> ManifestChoice | None:
        """Like :meth:`get_manifest`, with the chosen manifest's hash and what else was seen."""
        records = [s for s in self._read(manifest_key(validate_name(run_id, "run id")), "manifest", run_id)
                   if signer is None or s.signer == signer]
        choice = select_manifest(records, check_pin(manifest_hash))
        if choice is not None and choice.refused:
            logger.info("run %s: refused manifests %s", run_id,
                        "; ".join(f"{h[:16]}: {why}" for h, why in sorted(choice.refused.items())))
        return choice

    # -- peers and regions ---------------------------------------------------------------------
    def publish_peer(self, record: PeerRecord, ttl_s: float = 30.0) -> bool:
        """Announce this peer for ``ttl_s`` seconds (re-announce periodically to stay listed)."""
        if record.public_key != self.identity.public_key_hex:
            raise ConfigError("a peer record must carry the publishing identity's public key")
        return self._publish(record, record.run_id, ttl_s)

    def peer_records(self, run_id: str) -> list[SignedRecord]:
        """Verified, unexpired peer records of a run, with signer and issue time (for ages)."""
        return [s for s in self._read(peers_key(validate_name(run_id, "run id")), "peer", run_id)
                if s.record.public_key == s.signer]

    def list_peers(self, run_id: str) -> list[PeerRecord]:
        """Live peers of a run: verified records that have not expired, sorted by public key."""
        return [s.record for s in self.peer_records(run_id)]  # type: ignore[misc]

    def publish_region(self, run_id: str, region: str, median_rtt_s: float | None = None, ttl_s: float = 30.0) -> bool:
        """Announce this peer's membership in ``region`` for ``ttl_s`` seconds."""
        record = RegionMembership(run_id=run_id, region=region, peer_id=self.peer_id, median_rtt_s=median_rtt_s)
        return self._publish(record, run_id, ttl_s)

    def region_records(self, run_id: str) -> list[SignedRecord]:
        """Verified, unexpired region memberships of a run."""
        return self._read(regions_key(validate_name(run_id, "run id")), "region", run_id)

    def regions(self, run_id: str) -> dict[str, list[str]]:
        """Region name -> sorted peer ids of its live members."""
        out: dict[str, list[str]] = {}
        for s in self.region_records(run_id):
            out.setdefault(s.record.region, []).append(s.record.peer_id)
        return {name: sorted(members) for name, members in sorted(out.items())}

    # -- round-keyed records -------------------------------------------------------------------
    def publish_round_record(self, run_id: str, kind: str, round: int, body: dict, ttl_s: float = 600.0) -> bool:
        """Sign and store ``body`` as this peer's ``kind`` record for ``round`` of ``run_id``. A body
        that does not match its protocol kind's schema (:mod:`.wire`) raises MalformedRecord."""
        validate_name(run_id, "run id")
        try:
            record = RoundRecord(kind=kind, round=round, body=body)
        except ValidationError as e:
            raise MalformedRecord(f"not publishing a malformed {kind} record: {e.errors()[0].get('msg', e)}") from None
        return self._publish(record, run_id, ttl_s)

    def get_round_records(self, run_id: str, kind: str, round: int,
                          signers: Iterable[str] | None = None) -> list[SignedRecord]:
        """Verified ``kind`` records of ``round``: one per signer, each with ``.signer``, ``.body``, ``.issued_at``;
        of ``signers`` only if given (a :data:`~.keys.SIGNER_KEYED` kind: required, read in one traversal)."""
        validate_name(kind, "record kind")
        validate_name(run_id, "run id")
        want = None if signers is None else sorted(set(signers))
        if wire_kind(kind) not in SIGNER_KEYED:
            found = self._read(round_key(run_id, kind, round), "round", run_id, wire_kind(kind))
        elif want is None:
            raise ConfigError(f"{kind!r} records are read per signer: name the signers")
        else:
            found = self._read_many([round_key(run_id, kind, round, k) for k in want], "round", run_id, wire_kind(kind))
        return [s for s in found if s.kind == kind and s.round == round and (want is None or s.signer in want)]

    # -- life cycle ----------------------------------------------------------------------------
    def close_requests(self, why: str = "the peer is shutting down") -> None:
        """Fail every waiting and later request with DHTClosed at once (the node keeps running)."""
        self._pipe.close(why)

    def shutdown(self) -> None:
        """Stop the DHT process and its p2pd; remove the sockets they leave behind. Idempotent.

        Bounded (about ``sum(SHUTDOWN_GRACE_S)`` plus 3 s for p2pd at worst): pending requests fail
        with DHTClosed at once; the process is asked to stop, then terminated, then killed, and joined.
        """
        if getattr(self, "_shut", True):
            return
        self._shut = True
        _LIVE.discard(self)
        self._pipe.close("the DHT node is shutting down")
        children = _proc.child_pids(self._dht.pid) if self._dht.pid else []
        replica = getattr(self._dht, "_p2p_replica", None)
        if replica is not None:
            try:
                replica._terminate()  # closes its client socket; the daemon belongs to the DHT process
            except Exception as e:  # never let clean-up stop the rest of the shutdown
                logger.debug("closing the P2P replica failed: %r", e)
        self._ask_to_stop(SHUTDOWN_GRACE_S[0])
        _proc.stop_process(self._dht, SHUTDOWN_GRACE_S[1:])
        _proc.terminate_pids(children)
        _proc.remove_files(self._sockets)

    def _ask_to_stop(self, grace_s: float) -> None:
        """Send hivemind's ``_shutdown`` message (if no stuck sender holds the pipe) and wait ``grace_s``."""
        if not self._dht.is_alive():
            return
        if self._pipe.acquire_for_shutdown(timeout_s=1.0):
            try:
                self._dht._outer_pipe.send(("_shutdown", [], {}))
            except (OSError, ValueError) as e:
                logger.debug("could not send the DHT shutdown message: %r", e)
            finally:
                self._pipe.release()
        self._dht.join(grace_s)

    def __enter__(self) -> "SwarmDHT":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __del__(self):
        try:
            self.shutdown()
        except Exception:
            pass


@atexit.register
def _shutdown_live_nodes() -> None:
    """Shut down nodes still running at interpreter exit. Registered after ``multiprocessing`` (imported
    by hivemind above), so it runs first: the exit handler then finds no DHT process left to join."""
    for node in list(_LIVE):
        try:
            node.shutdown()
        except Exception as e:
            logger.debug("shutdown at exit failed: %r", e)
