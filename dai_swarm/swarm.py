"""``Swarm``: the public facade that a training script uses in about ten lines.

::

    import dai_swarm
    task = dai_swarm.load_task("tinylm")
    swarm = dai_swarm.Swarm(task, run_id="tinylm-42", initial_peers=[...], region="auto")
    opt = swarm.optimizer()
    for batch in swarm.batches():
        loss = task.loss(swarm.model, batch); loss.backward()
        opt.step(); opt.zero_grad()

It starts (or joins) the DHT, reads or creates the signed run manifest (refusing a run whose task,
codec or library versions differ from ours), picks a region, and starts the round runtime.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Iterator, Sequence

import torch
from pydantic import ValidationError

from .checkpoints import Checkpointer, export_held_state
from .dht.envelope import MAX_CLOCK_SKEW_S
from .dht.manifest import MAX_LEAD_S, PIN_HEX, check_pin
from .dht.manifest import manifest_hash as manifest_hash_of
from .dht.node import DHT_START_TIMEOUT_S, SwarmDHT
from .dht.reach import ReachabilityWatch, p2p_options
from .dht.records import RunManifest
from .dht.regions import choose_region
from .errors import ConfigError, DHTTimeout, ManifestMismatch, ManifestPinMismatch
from .export import Provenance, load_export
from .identity import Identity
from .logging import get_logger
from .optim import codecs
from .optim.optimizer import SwarmOptimizer
from .resume import live_peers, resume_manifest
from .runtime import RoundRuntime
from .tasks import Task, load_task
from .tasks.contract import validate_task
from .verification.spotcheck import DEFAULT_CHECKS_PER_UPDATE, SpotChecker

__all__ = ["Swarm", "manifest_versions", "outer_defaults"]

logger = get_logger(__name__)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def manifest_versions() -> dict[str, str]:
    """Library versions that change the bytes or the arithmetic of updates (checked at join)."""
    out = {"torch": torch.__version__.split("+")[0]}
    out.update(codecs.codec_versions())
    return out


def _start_time(t0: float | None, start_in_s: float | None) -> float:
    """Round 0's start: ``t0`` (Unix seconds), else ``start_in_s`` seconds from now (default 2 s)."""
    if t0 is not None and start_in_s is not None:
        raise ConfigError("give t0 or start_in_s, not both")
    if t0 is not None:
        return float(t0)
    start_in_s = 2.0 if start_in_s is None else float(start_in_s)
    if not math.isfinite(start_in_s) or start_in_s < 0:
        raise ConfigError(f"start_in_s must be a number >= 0, got {start_in_s}")
    return float(math.ceil(time.time() + start_in_s))


SLOW_DHT_GRACE_S = 60.0  # how long a busy DHT process may keep the manifest read waiting beyond its wait


def outer_defaults(codec: str) -> tuple[float, float, float]:
    """A new run's outer step for ``codec``: (lr, Nesterov momentum, delay compensation fraction).

    Sparse runs: the error-feedback buffer stands in for momentum, and without momentum the full
    delay compensation halves the progress, so lr 1.4 and 0.3 of it (stable in the linear model for
    any inner progress, docs/design.md "Delay compensation without momentum"); the others: Nesterov
    0.6 / 0.9 with full compensation (docs/design.md, "Delay compensation without momentum")."""
    return (1.4, 0.0, 0.3) if codec == "sparse" else (0.6, 0.9, 1.0)


def _manifest(**fields: Any) -> RunManifest:
    """The run manifest of these settings; invalid ones raise ConfigError naming each field."""
    try:
        return RunManifest(**fields)
    except ValidationError as e:
        why = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid run settings: {why}") from None


class Swarm:
    """One peer of a training run; see the module docstring.

    ``task``: a :class:`Task`, a task spec (``"tinylm"``, ``"module:attr"``), or None to take the
    run's task from its signed manifest (joiners only). ``initial_peers``:
    multiaddrs of any peers of the swarm (empty: start a new swarm). ``region``: a name or
    ``"auto"`` (RTT clustering). ``identity``: an :class:`Identity`, a key path, or None
    (ephemeral). The run settings (``round_s``; with ``round_s_max`` the first rounds' length, which
    then adapts to what the swarm's machines need up to ``round_s_max``; with several regions at merges ...
    ``codec``: ``"int8"`` (dense) or ``"sparse"`` (chunked top-k with error feedback; its outer step
    defaults to plain SGD at lr 1.4 without momentum, the buffer standing in for it, and 0.3 of
    the delay compensation, ``delay_compensation`` 0.3; int8: Nesterov 0.6 / 0.9, full compensation), among others;
    ``t0``, or ``start_in_s``: round 0 starts that
    many seconds after this peer creates the run) are used only when this peer creates the run; a joiner takes them from the signed manifest. ``attack`` is for tests and benchmarks.
    ``ledger`` is the path of this peer's reward log (written as rounds close; None: no log).
    ``verifier``: the verification hooks (default: a :class:`SpotChecker` at the manifest's
    ``checks_per_update``, the expected recomputations of each update per round; ``False``: none, plain averaging and no reputation). ``manifest_hash``:
    the run's pinned manifest hash (the ``--manifest`` value of a peer's join line, 32-64 hex); a
    peer given it accepts no other manifest (:class:`ManifestPinMismatch`) and never creates the
    run. Without it a joiner takes the earliest issued valid manifest and logs the hash it pinned.
    ``trust``: public keys (64 hex) of peers this peer trusts, beside the manifest's founders, when
    it joins and holds no state yet: they decide which state it downloads (docs/design.md,
    "Trust model"). ``founders``: when this peer creates the run, the keys that start with
    standing beside its own (e.g. one machine per region of the organiser). ``resume``: the folder
    of an export (:meth:`export`, ``dai-swarm export``) to start from: when no peer of the run is
    live this peer starts a new generation of the run from it, else it joins normally and the export
    is only a faster start (see :mod:`dai_swarm.resume`). ``checkpoint_dir``: export this peer's
    agreed state there every ``checkpoint_every`` rounds, keeping the newest ``checkpoint_keep``.
    ``reachability``: ``"auto"``, ``"public"`` or ``"private"`` (behind NAT: reachable through a
    relay), see :mod:`dai_swarm.dht.reach`; :meth:`status` says what others can use.
    ``manifest_wait_s``: how long to look for the run's manifest through ``initial_peers`` before
    creating the run (with a task) or giving up (``task=None``: at least 10 s).
    """

    def __init__(self, task: Task | str | None, run_id: str, initial_peers: Sequence[str] = (), region: str = "auto", *,
                 identity: Identity | str | None = None, host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
                 round_s: float = 10.0, round_s_max: float | None = None, codec: str = "int8", codec_params: dict | None = None,
                 outer_lr: float | None = None, outer_momentum: float | None = None, delay_compensation: float | None = None,
                 max_inner_steps: int = 10_000,
                 cross_region_period: int = 5, checks_per_update: float = DEFAULT_CHECKS_PER_UPDATE, seed: int = 0,
                 t0: float | None = None, attack: Any = None, evaluate: bool = True, verifier: Any = None,
                 ledger: str | None = None, manifest_wait_s: float = 3.0, start_timeout_s: float = DHT_START_TIMEOUT_S,
                 manifest_hash: str | None = None, trust: Sequence[str] = (), founders: Sequence[str] = (),
                 start_in_s: float | None = None, resume: str | None = None, checkpoint_dir: str | None = None,
                 checkpoint_every: int = 10, checkpoint_keep: int = 3, reachability: str = "auto"):
        self.pin = check_pin(manifest_hash)
        if round_s_max is not None and not round_s_max >= round_s:
            raise ConfigError(f"round_s_max ({round_s_max}) must be at least round_s ({round_s})")
        bad = [k for k in (*trust, *founders) if not isinstance(k, str) or not _HEX64.fullmatch(k)]
        if bad:
            raise ConfigError(f"trusted and founder keys are 64-hex ed25519 public keys, got {bad[0]!r}")
        self.task = load_task(task) if isinstance(task, str) else task
        if self.task is not None and not isinstance(self.task, Task):
            raise ConfigError(f"task must be a dai_swarm.Task or a task spec, got {type(task).__name__}")
        if isinstance(task, Task):
            validate_task(task)  # a broken contract is refused before the DHT starts (TaskError)
        self.exported = load_export(resume, run_id=run_id, task=self.task) if resume else None
        if self.task is None and self.exported is not None:
            task = self.exported.provenance.manifest["task"]
            self.task = load_task(task)
            self.exported = load_export(resume, run_id=run_id, task=self.task)  # its config hash too
        if self.task is None and not initial_peers:
            raise ConfigError("no task given and no initial peers to read the run's task from: pass a task")
        task_spec = task if isinstance(task, str) else getattr(self.task, "name", None)
        if isinstance(identity, str):
            identity = Identity.load_or_create(identity)
        self.identity = identity or Identity.generate()
        p2p = p2p_options(reachability, initial_peers, host_maddrs)
        self.dht = SwarmDHT(self.identity, initial_peers=initial_peers, host_maddrs=host_maddrs,
                            start_timeout_s=start_timeout_s, **p2p)
        self.runtime: RoundRuntime | None = None
        self.reach = ReachabilityWatch(lambda: self.dht.maddrs(latest=True), p2p["force_reachability"])
        try:
            self.reach.start()
            if self.task is None:  # a volunteer who did not name the task: take the run's
                self.task, task_spec = self._task_from_manifest(run_id, max(manifest_wait_s, 10.0))
                manifest_wait_s = max(manifest_wait_s, 10.0)  # the run exists: it is read again below
            lr0, mu0, dc0 = outer_defaults(codec)
            outer_lr = lr0 if outer_lr is None else outer_lr
            outer_momentum = mu0 if outer_momentum is None else outer_momentum
            delay_compensation = dc0 if delay_compensation is None else delay_compensation
            if codec_params is None:  # sparse frames are packed bits: zstd finds nothing to squeeze
                codec_params = {} if codec == "sparse" else dict(codecs.RUN_CODEC_PARAMS)
            wanted = _manifest(
                run_id=run_id, task=task_spec, task_config_hash=self.task.config_hash(), round_s=round_s,
                round_s_max=round_s_max,
                cross_region_period=cross_region_period, max_inner_steps=max_inner_steps, outer_lr=outer_lr,
                outer_momentum=outer_momentum, delay_compensation=delay_compensation, codec=codec,
                # updates are small next to a round: spend the CPU on zstd for 11-14% fewer bytes
                codec_params=dict(codec_params),
                checks_per_update=checks_per_update, seed=seed,
                t0=_start_time(t0, start_in_s),
                versions=manifest_versions(),
                founders=tuple(dict.fromkeys((self.identity.public_key_hex, *founders))))
            wait_s = max(manifest_wait_s, 10.0) if self.pin else manifest_wait_s if initial_peers else 0.0
            if self.exported is not None and not self.pin:
                self.manifest = self._resume_or_join(wanted, wait_s if initial_peers else 0.0, start_in_s, founders)
            else:
                self.manifest = self._agree_manifest(wanted, wait_s=wait_s)
            self.manifest_hash = manifest_hash_of(self.manifest)
            logger.info("run %s: manifest %s%s (others join with --run-id %s --manifest %s)", run_id,
                        self.manifest_hash[:PIN_HEX], " (pinned)" if self.pin else "", run_id,
                        self.manifest_hash[:PIN_HEX])
            self.region = choose_region(self.dht, run_id, region).region
            if verifier is None:  # spot checks, verdicts, reputation and the robust rule (SPEC §7)
                verifier = SpotChecker(self.task, self.manifest.checks_per_update)
            self.runtime = RoundRuntime(self.task, self.dht, self.identity, self.manifest, self.region,
                                        attack=attack, evaluate=evaluate, verifier=verifier or None, ledger=ledger,
                                        trusted=tuple(trust),
                                        resume_state=self.exported.state if self.exported is not None else None)
            if checkpoint_dir:
                self.runtime.coordinator.on_round_tallied.append(
                    Checkpointer(self, checkpoint_dir, checkpoint_every, checkpoint_keep))
            self.runtime.strategy.bind(self.runtime)
            if hasattr(verifier, "bind"):
                verifier.bind(self.runtime)
            self.runtime.start()
        except BaseException:
            self.shutdown()
            raise
        self._optimizer: SwarmOptimizer | None = None

    def _read_manifest(self, run_id: str, wait_s: float) -> RunManifest | None:
        """The run's manifest (pinned by ``self.pin`` if given), waiting up to ``wait_s`` for one to
        appear; a pin mismatch is raised only once the wait is over (a DHT is eventually consistent).
        A DHT process too busy to answer (many peers starting on one host) is asked again for up to
        ``SLOW_DHT_GRACE_S`` more, then its :class:`DHTTimeout` is raised: never read as "no run yet"."""
        deadline = time.time() + wait_s
        while True:
            try:
                choice = self.dht.manifest_choice(run_id, manifest_hash=self.pin)
            except ManifestPinMismatch:
                if time.time() >= deadline:
                    raise
                choice = None
            except DHTTimeout as e:
                if time.time() >= deadline + SLOW_DHT_GRACE_S:
                    raise
                logger.info("the DHT is slow to answer (%s); asking again", e)
                continue
            if choice is not None:
                if choice.competing:
                    logger.warning("run %s: %d other valid manifests compete (%s); using %s%s", run_id,
                                   len(choice.competing), ", ".join(h[:PIN_HEX] for h in choice.competing),
                                   choice.hash[:PIN_HEX], "" if self.pin else
                                   " (the earliest issued): pin the run's with --manifest HASH")
                return choice.manifest
            if time.time() >= deadline:
                return None
            time.sleep(0.25)

    def _task_from_manifest(self, run_id: str, wait_s: float) -> tuple[Task, str]:
        manifest = self._read_manifest(run_id, wait_s)
        if manifest is None:
            raise ConfigError(f"no run {run_id!r} found through the initial peers within {wait_s:.0f}s; "
                              "check --run-id, or pass --task to start a new run")
        logger.info("run %s trains task %s", run_id, manifest.task)
        return load_task(manifest.task), manifest.task

    def _agree_manifest(self, wanted: RunManifest, wait_s: float) -> RunManifest:
        existing = self._read_manifest(wanted.run_id, wait_s)
        if existing is None and self.pin:
            raise ConfigError(f"no manifest of run {wanted.run_id!r} with hash {self.pin} found through the "
                              f"initial peers within {wait_s:.0f}s (a pinned peer never creates the run)")
        if existing is None:
            now = time.time()
            if not wanted.t0 - MAX_LEAD_S <= now <= wanted.t0 + MAX_CLOCK_SKEW_S:
                raise ConfigError(f"t0 {wanted.t0:.0f} is {now - wanted.t0:+.0f} s from now: a new run's manifest "
                                  f"must be issued at most {MAX_LEAD_S / 3600:.0f} h before t0 and "
                                  f"{MAX_CLOCK_SKEW_S:.0f} s after it")
            self.dht.publish_manifest(wanted)
            logger.info("created run %s (t0 %.0f, round %.1fs, codec %s)", wanted.run_id, wanted.t0, wanted.round_s,
                        wanted.codec)
            existing = self._read_manifest(wanted.run_id, 0.0) or wanted
        return self._check_manifest(existing, wanted)

    def _resume_or_join(self, wanted: RunManifest, wait_s: float, start_in_s: float | None,
                        founders: Sequence[str]) -> RunManifest:
        """With an export (``resume``): join the run if its peers are live, else start its next
        generation from the export (:mod:`dai_swarm.resume`)."""
        me = self.identity.public_key_hex
        existing = self._read_manifest(wanted.run_id, wait_s) if wait_s else None
        if existing is not None and live_peers(self.dht, wanted.run_id, me, wait_s=max(wait_s, existing.round_s)):
            logger.info("run %s has live peers: joining it (the export is only a faster start)", wanted.run_id)
            return self._check_manifest(existing, wanted)
        mine = resume_manifest(self.exported, _start_time(None, start_in_s), (me, *founders), manifest_versions())
        self.dht.publish_manifest(mine)
        prov = self.exported.provenance
        logger.info("no live peer holds run %s: resuming it from export %s (state %s closing round %d)",
                    wanted.run_id, self.exported.path, prov.state_hash[:12], prov.round)
        chosen = self._read_manifest(wanted.run_id, 2.0) or mine
        if manifest_hash_of(chosen) != manifest_hash_of(mine):
            logger.warning("run %s: another generation %s was issued first; following it", wanted.run_id,
                           manifest_hash_of(chosen)[:PIN_HEX])
        return self._check_manifest(chosen, wanted)

    def _check_manifest(self, existing: RunManifest, wanted: RunManifest) -> RunManifest:
        """``existing`` if this peer can train it (same task config, same codec library versions)."""
        if existing.task_config_hash != wanted.task_config_hash:
            raise ManifestMismatch(f"run {wanted.run_id!r} trains task {existing.task!r} with config hash "
                                   f"{existing.task_config_hash[:12]}, this peer has {wanted.task!r} with "
                                   f"{wanted.task_config_hash[:12]}: start with the run's task and options "
                                   "(or leave --task out to take the run's)")
        for lib, version in existing.versions.items():
            mine = wanted.versions.get(lib)
            if mine is not None and mine != version:
                raise ManifestMismatch(f"run {wanted.run_id!r} needs {lib} {version}, this peer has {mine}: "
                                       "exact verification needs identical codec libraries")
        return existing

    # --- what the training loop uses ------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The model being trained (its weights are reset to each round's canonical base)."""
        return self.runtime.model

    def optimizer(self) -> SwarmOptimizer:
        """The torch optimizer to step: the task's inner optimizer wrapped in the round protocol."""
        if self._optimizer is None:
            self._optimizer = SwarmOptimizer(self.task.inner_optimizer(self.model.parameters()), self.runtime)
        return self._optimizer

    def batches(self, max_rounds: int | None = None) -> Iterator[Any]:
        """Yield the batches assigned to this peer, forever or until ``max_rounds`` rounds were trained."""
        rt = self.runtime
        start = rt.round
        while not rt._stop.is_set() and (max_rounds is None or rt.round < start + max_rounds):
            batch = self.task.get_batch(rt.batch_indices())
            yield rt.strategy.tamper_batch(batch)

    # --- introspection and shutdown ---------------------------------------------------------------
    @property
    def round(self) -> int:
        """The round this peer is training."""
        return self.runtime.round

    def status(self) -> dict:
        """Round, state hash, validation loss, bytes per link class, region, peer ids."""
        out = dict(self.runtime.metrics()) if self.runtime else {}
        out.update({"run_id": self.manifest.run_id, "manifest_hash": getattr(self, "manifest_hash", None),
                    "region": getattr(self, "region", None),
                    "peer_id": self.dht.peer_id, "public_key": self.identity.public_key_hex})
        out.update(self.reach.status())
        return out

    @property
    def initial_peers(self) -> list[str]:
        """Multiaddrs other peers can pass as ``initial_peers`` to join this swarm."""
        return self.dht.visible_maddrs

    @property
    def join_line(self) -> str:
        """``--run-id R --manifest HASH --initial-peers M...``: what another peer needs to join this run."""
        return (f"--run-id {self.manifest.run_id} --manifest {self.manifest_hash[:PIN_HEX]} "
                f"--initial-peers {' '.join(self.initial_peers)}")

    def export(self, out_dir: str, round: int | None = None) -> Provenance:
        """Write this peer's agreed state after ``round`` (default: the newest round closed here) to
        ``out_dir``: ``model.safetensors``, ``state.safetensors``, ``provenance.json`` (see
        :mod:`dai_swarm.export`). Returns the provenance written."""
        return export_held_state(self, out_dir, round)

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop training threads, the payload server and the DHT; bounded, idempotent.

        Threads get ``grace_s`` to finish their current step; then every request to the DHT fails at
        once (nothing waits on a busy or dead DHT process), the reward log gets its "leave" record
        and is closed, and the DHT process and its p2pd are stopped (SwarmDHT.shutdown).
        """
        self.reach.stop()
        rt = self.runtime
        if rt is not None:
            rt.stop_threads(grace_s)
            self.dht.close_requests()
            rt.shutdown(timeout_s=1.0)
            if hasattr(rt.verifier, "close"):
                rt.verifier.close(timeout_s=1.0)
        self.dht.shutdown()

    def __enter__(self) -> "Swarm":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
