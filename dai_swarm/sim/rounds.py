"""The per-round protocol steps of the simulator: announce, close, tally, apply base (and merge).

Each step runs the real protocol core for every simulated peer: :class:`RoundBook` intake, copy and
equivocation rules and inclusion, :func:`compute_next_base` (aggregation, delay compensation,
outer step, replicated reputation), :class:`Vote` and :func:`tally`, and the cross-region merge
arithmetic of :mod:`dai_swarm.optim.crossregion`. Only I/O is simulated: whether a record or a
payload reached a peer in time follows from the link model, the DHT model and who is alive.

Batching (to scale to 1,000 peers honestly): peers of one protocol region that saw the same
announcements, fetched the same payloads and hold the same bases run ONE book and ONE compute, whose
result every one of them would get bitwise (I1); likewise for identical visible vote sets.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import Counter, defaultdict
from types import SimpleNamespace
from typing import Any

from dai_swarm.canonical import sha256_hex
from dai_swarm.errors import CodecError, MalformedRecord
from dai_swarm.optim import codecs
from dai_swarm.optim.book import BookLimits, RoundBook, UpdateAnnouncement
from dai_swarm.optim.machine import AdoptInclusion, KeepState, ResyncState
from dai_swarm.optim.rules import compute_next_base
from dai_swarm.optim.crossregion import (MERGE_END, gateway_of, merge_region_deltas, merged_base,
                                         region_delta, weight_cap)
from dai_swarm.optim.votes import HeadCount, Vote, confirm_state, tally
from dai_swarm.verification.recompute import recompute_update
from dai_swarm.verification.spotcheck import MAX_RECHECKS_PER_ROUND

from .verify import check_prob_hit, make_verdict, recheck

__all__ = ["RoundSteps"]

ZERO64 = "0" * 64


class RoundSteps:
    """Mixin of :class:`~dai_swarm.sim.engine.Simulator`: one method per protocol action."""

    # --- announce (train_deadline(q)) ------------------------------------------------------------
    def announce(self, q: int) -> None:
        """Every live peer holding base q trains until the deadline (real steps) and announces."""
        cfg, clock = self.cfg, self.clock
        dl = clock.train_deadline(q)
        bs = int(self.task.batch_size)
        load = self.load(dl)
        for p in self.peers:
            if not p.alive(dl) or q not in p.bases:
                continue
            t_start = max(clock.start(q), p.ready.get(q, -math.inf))
            busy = cfg.protocol_cpu_s * load  # the round's protocol work shares the peer's CPU with training
            steps = min(cfg.max_inner_steps, int(math.floor(p.speed / load * max(0.0, dl - t_start - busy))))
            if steps < 1:
                continue
            base = self.states[p.bases[q]]
            tb = getattr(p.attack, "tamper_batch", None) if p.attack is not None else None
            delta = recompute_update(self.task, base.params, cfg.run_id, cfg.seed, p.key, q, steps, raw=True,
                                     model=self.model, tamper_batch=tb)
            claimed = steps
            if p.attack is not None:
                delta = p.attack.tamper(dict(delta), q)
            blob = codecs.encode(delta, cfg.codec, **cfg.codec_params)
            if p.attack is not None:
                blob = p.attack.tamper_blob(blob, q)
                claimed = p.attack.claimed_steps(steps)
            digest = sha256_hex(blob)
            try:
                ann = UpdateAnnouncement(cfg.run_id, q, base.hash, p.key, claimed, claimed * bs, cfg.codec, digest,
                                         len(blob), p.region)
            except MalformedRecord:
                self.counters["malformed_announcement"] += 1
                continue
            try:
                self.decoded[digest] = codecs.decode(blob, expect=self.expect, max_bytes=self.max_decoded)
            except CodecError:
                self.decoded[digest] = None
            self.sizes[digest] = len(blob)
            self.anns[(p.proto, q)].append((ann, dl + cfg.encode_s * load + self.net.dht_s(p.lat), p.idx))
            self.trained[q] += 1

    # --- close (close_time(q)) -------------------------------------------------------------------
    def _fetch(self, p, items, start: float, deadline: float, q: int, kind: str) -> tuple[set, float]:
        """Fetch payloads (ann, author idx) for peer p from ``start``; (ok digests, finish time)."""
        ok, done, cum = set(), start, {"intra": 0, "cross": 0}
        failed = False
        for ann, a in sorted(items, key=lambda it: it[0].digest):
            if a == p.idx:
                ok.add(ann.digest) if self.decoded.get(ann.digest) is not None else None
                continue
            author = self.peers[a]
            link = self.net.link_class(p.region, author.region)
            spec = self.net.spec(p.region, author.region)
            cum[link] += ann.size_bytes
            t_done = start + 2 * spec.latency_s * p.lat + cum[link] / spec.bandwidth_Bps
            if not author.alive(start) or t_done > deadline:
                failed = True
                continue
            self.ledger.add(q, link, ann.size_bytes, kind, p.idx)
            if self.decoded.get(ann.digest) is not None:
                ok.add(ann.digest)
            done = max(done, t_done)
        return ok, (deadline if failed else done)

    def _book(self, g: str, q: int, base_q: str, seen: list, ok: set) -> RoundBook:
        limits = BookLimits(max_inner_steps=self.cfg.max_inner_steps, batch_size=int(self.task.batch_size),
                            max_payload_bytes=self.max_payload, codecs=frozenset([self.cfg.codec]))
        book = RoundBook(self.cfg.run_id, q, base_q, limits=limits)
        book.offer_many(seen)
        for d in book.to_fetch():
            book.mark_fetched(d, d in ok, "" if d in ok else "unreachable")
        return book

    def _compute(self, book: RoundBook, base_next: str, base_q: str, verdicts: tuple) -> str:
        state = compute_next_base(book, self.decoded, self.states[base_next], self.states[base_q], self.verifier,
                                  verdicts, outer_lr=self.cfg.outer_lr, outer_momentum=self.cfg.outer_momentum,
                                  delay_compensation=self.cfg.delay_compensation)
        self.states.setdefault(state.hash, state)
        return state.hash

    def _majority_base(self, g: str, r: int) -> str | None:
        return self.region_base.get((g, r))

    def close(self, q: int) -> None:
        """Every live peer holding base q reads the announcements, fetches, computes and votes."""
        clock = self.clock
        c = clock.close_time(q)
        load = self.load(c)
        groups: dict[tuple, str] = {}
        for p in self.peers:
            if not p.alive(c) or q not in p.bases:
                continue
            g = p.proto
            if q + 1 not in p.bases:  # a joiner holds θ_q only: re-sync θ_{q+1} from the region
                h = self._majority_base(g, q + 1)
                if h is None:
                    continue
                p.bases[q + 1], p.ready[q + 1] = h, self._download_state(p, h, c, q)
            lookup = c + self.net.dht_s(p.lat)
            entries = self.anns[(g, q)]
            seen = [(ann, a) for ann, vis, a in entries if vis <= lookup]
            ok, done = self._fetch(p, seen, lookup, p.machine.fetch_deadline(q), q, "update")
            key = (p.bases[q], p.bases[q + 1], tuple(sorted((ann.peer, ann.digest) for ann, _ in seen)),
                   frozenset(ok), p.machine.verdicts_for(q))
            if key not in groups:
                book = self._book(g, q, p.bases[q], [ann for ann, _ in seen], ok)
                inclusion = book.close()
                groups[key] = (inclusion, self._compute(book, p.bases[q + 1], p.bases[q], key[4]))
            inclusion, h = groups[key]
            vote = Vote(self.cfg.run_id, q, p.key, inclusion, h)
            carried = () if p.attack is not None else self.pending_verdicts.get((g, q), ())
            t_vote = (done + (self.cfg.compute_s_per_update * len(inclusion) + 0.5 * self.cfg.protocol_cpu_s) * load
                      + self.net.dht_s(p.lat))
            self.votes[(g, q)][p.idx] = SimpleNamespace(vote=vote, time=t_vote, seen=seen, ok=ok, key=key,
                                                        verdicts=tuple(carried), voted=p.machine.may_vote(q))
        self.books_run[q] = len(groups)

    # --- tally (tally_time(q)) -------------------------------------------------------------------
    def tally(self, q: int) -> None:
        """Each peer that closed the round tallies the votes it sees and executes what its round
        machine decides (keep, adopt, re-sync); checks are scheduled."""
        clock, cfg = self.clock, self.cfg
        t = clock.tally_time(q)
        apply_s = (cfg.apply_s + 0.5 * cfg.protocol_cpu_s) * self.load(t)  # install and evaluate the new base
        self.finals[q] = {}
        cache: dict[tuple, Any] = {}
        adopt_cache: dict[tuple, str | None] = {}
        for g in self.protos:
            closers = self.votes[(g, q)]
            by_time = sorted((r.time, j) for j, r in closers.items() if r.voted)
            times = [x for x, _ in by_time]
            electorate = {rec.vote.voter for j, rec in closers.items() if self.peers[j].alive(t)}
            confirm: list[int] = []
            for i, rec in closers.items():
                p = self.peers[i]
                if not p.alive(t):
                    continue
                look = t + self.net.dht_s(p.lat)
                k = bisect.bisect_right(times, look)
                extra = self.states[p.bases[q + 1]].extra
                ck = (g, k, p.bases[q + 1])
                if ck not in cache:
                    visible = sorted(j for _, j in by_time[:k])
                    rep = self.verifier.vote_weights(extra)
                    res = tally([closers[j].vote for j in visible], rep, run_id=cfg.run_id, round=q)
                    vres = tally([Vote(cfg.run_id, q, closers[j].vote.voter, tuple(sorted(closers[j].verdicts)),
                                       ZERO64) for j in visible], rep, run_id=cfg.run_id, round=q)
                    won = frozenset(closers[j].vote.voter for j in visible
                                    if res.decided and closers[j].vote.state_hash == res.state_hash)
                    cache[ck] = (res, vres, won)
                res, vres, won = cache[ck]
                m = p.machine
                m.tallied_verdicts(q, vres)
                cmd = m.decide(q, res, candidate=rec.vote.state_hash, inclusion=rec.vote.inclusion, winners=won,
                               now=look)
                mode = "agreed"
                if isinstance(cmd, AdoptInclusion):
                    h = self._adopt(p, g, q, rec, cmd, look, adopt_cache)
                    cmd, mode = m.adopted(q, res, candidate=h, winners=won, now=look), "adopted"
                if isinstance(cmd, KeepState):
                    self.finals[q][i] = (cmd.state_hash, t + apply_s, mode if cmd.agreed else "undecided")
                    seen = {closers[j].vote.voter: closers[j].vote.state_hash for _, j in by_time[:k]}
                    if m.must_confirm(q, cmd, electorate, seen, p.key):
                        confirm.append(i)
                elif isinstance(cmd, ResyncState) and cmd.target in self.states:
                    # on a sync round the winners' merged state is what apply() maps this hash to
                    self.finals[q][i] = (cmd.target, self._download_state(p, cmd.target, look, q) + apply_s,
                                         "resynced")
                else:
                    self.finals[q][i] = (None, t, "no_state")
            self._confirm(g, q, confirm, electorate)
        self._spot_checks(q)

    def _confirm(self, g: str, q: int, idx: list[int], electorate: set[str]) -> None:
        """Peers whose machine asked for it compare their kept state with the region's state records
        (the finals of its peers, as the real peer reads them), with the same pure rule; a peer outside
        a settled majority re-syncs before round q+2 starts."""
        finals = self.finals[q]
        offers = [(self.peers[j].key, h) for j, (h, _, _) in finals.items() if h is not None and self.peers[j].proto == g]
        for i in idx:
            p, (h, t_ready, _) = self.peers[i], finals[i]
            weights = self.verifier.vote_weights(self.states[p.bases[q + 1]].extra)
            decision = confirm_state(h, p.key, offers, electorate, weights)
            if decision.action == "resync" and decision.target in self.states:
                finals[i] = (decision.target, self._download_state(p, decision.target, t_ready, q), "resynced")
                self.counters["confirm_resyncs"] += 1

    def _adopt(self, p, g: str, q: int, rec, cmd: AdoptInclusion, look: float, cache: dict) -> str | None:
        """Minority peer: fetch the winning inclusion's missing payloads by the machine's deadline, recompute."""
        entries = {ann.digest: (ann, a) for ann, _, a in self.anns[(g, q)]}
        missing = [entries[d] for d in cmd.inclusion if d not in rec.ok and d in entries]
        got, _ = self._fetch(p, missing, look, cmd.deadline, q, "update")
        ok = frozenset(rec.ok | got)
        key = (rec.key, cmd.inclusion, ok)
        if key not in cache:
            book = self._book(g, q, p.bases[q], [a for a, _ in rec.seen], set(rec.ok))
            book.close()
            book.adopt(cmd.inclusion)
            book.offer_many([ann for ann, _ in missing])
            for d in book.to_fetch():
                book.mark_fetched(d, d in ok, "" if d in ok else "unreachable")
            cache[key] = self._compute(book, p.bases[q + 1], p.bases[q], rec.key[4]) if book.ready else None
        return cache[key]

    def _download_state(self, p, h: str, start: float, q: int) -> float:
        """Download a base-state snapshot from region donors (intra link); returns when it is held."""
        size = len(self.states[h].blob())
        spec = self.net.spec(p.region, p.region)
        self.ledger.add(q, "intra", size, "state", p.idx)
        self.counters["state_downloads"] += 1
        return start + 2 * spec.latency_s * p.lat + size / spec.bandwidth_Bps

    # --- spot checks of round q's majority inclusion ---------------------------------------------
    def _spot_checks(self, q: int) -> None:
        cfg = self.cfg
        t = self.clock.tally_time(q)
        for g in self.protos:
            votes = [r.vote for r in self.votes[(g, q)].values() if r.voted]
            res = tally(votes, HeadCount(), run_id=cfg.run_id, round=q)
            if not res.decided:
                continue
            anns = {ann.digest: (ann, a) for ann, _, a in self.anns[(g, q)]}
            members = [p for p in self.peers if p.proto == g and p.alive(t)]
            ids, budget = [], Counter()
            for d in res.inclusion:
                if d not in anns or not check_prob_hit(cfg.seed, d, cfg.check_prob):
                    continue
                ann, _ = anns[d]
                ranked = sorted((p for p in members if p.key != ann.peer),
                                key=lambda p: hashlib.sha256(f"{p.key}|{d}".encode()).digest())[:2]
                if not ranked:
                    continue
                base = self.states[ann.base_hash]
                passed, dist, recomputed = recheck(self.task, self.model, base.params, ann, self.decoded.get(d),
                                                   run_id=cfg.run_id, seed=cfg.seed, codec=cfg.codec, tau=cfg.tau,
                                                   codec_params=cfg.codec_params)
                self.counters["spot_checks"] += 1
                liar = self.peers[anns[d][1]].attack is not None  # its byzantine mates pass it

                def verdict_of(v, recheck: bool = False):
                    lie = v.attack is not None and liar
                    self.verifications[q][v.key] += 1
                    return make_verdict(q, v.key, ann, True if lie else passed, 0.0 if lie else dist,
                                        ann.digest if lie else recomputed, 0.3 * cfg.round_s, recheck=recheck)

                first = [verdict_of(v) for v in ranked]
                ids += [self.verifier.add(v) for v in first]
                if all(v.passed for v in first):
                    continue
                for v in members:  # the other members re-check a fail at their next close (verifier._scan)
                    if v.key != ann.peer and v not in ranked and budget[v.key] < MAX_RECHECKS_PER_ROUND:
                        budget[v.key] += 1
                        self.rechecks[(g, q + 2)].append(self.verifier.add(verdict_of(v, recheck=True)))
                        self.counters["rechecks"] += 1
            ids += self.rechecks.pop((g, q + 1), [])
            self.pending_verdicts[(g, q + 1)] = tuple(sorted(set(ids)))

    # --- apply base q+2 (merge on sync rounds) ---------------------------------------------------
    def apply(self, r: int) -> None:
        """Install base ``r`` at every voter of round r-2; merge regions on sync rounds."""
        q = r - 2
        finals = self.finals.pop(q, {})
        sync = self.planner.is_sync_round(r)  # the machine's rule (merge_period 0 in a flat or 1-region run)
        by_region: dict[str, Counter] = defaultdict(Counter)
        for i, (h, _, _) in finals.items():
            if h is not None:
                by_region[self.peers[i].proto][h] += 1
        majority = {g: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for g, c in by_region.items()}
        merged_of = self._merge(q, majority, finals) if sync else {}
        for i, (h, t_ready, mode) in finals.items():
            p = self.peers[i]
            if h is None:  # _catch_up: poll for the region's majority state
                h = majority.get(p.proto)
                if h is None:
                    continue
                t_catch = self.clock.tally_time(q) + 0.25
                t_ready = (self._download_state(p, merged_of.get((p.proto, h), h), t_catch, q)
                           + self.cfg.apply_s * self.load(t_catch))
            if (p.proto, h) in merged_of:
                h, t_ready = merged_of[(p.proto, h)], max(t_ready, self.merge_done.get(p.proto, t_ready))
            p.bases[r], p.ready[r] = h, t_ready
            for old in [k for k in p.bases if k < r - 3]:
                p.bases.pop(old, None)
                p.ready.pop(old, None)
        for g, h in majority.items():
            self.region_base[(g, r)] = merged_of.get((g, h), h)
        self.modes[q] = Counter(mode for _, _, mode in finals.values())

    def _merge(self, q: int, majority: dict, finals: dict) -> dict[tuple[str, str], str]:
        """Cross-region merge of base q+2: region deltas, one gateway per region, weighted mean."""
        r, T = q + 2, self.cfg.round_s
        t = self.clock.tally_time(q) + 0.10 * T
        end = self.clock.tally_time(q) + MERGE_END * T
        deltas = {}
        for g, h in sorted(majority.items()):
            st = self.states[h]
            blob = codecs.encode(region_delta(st), self.cfg.codec, **self.cfg.codec_params)
            deltas[g] = (sha256_hex(blob), len(blob), int(st.extra.get("epoch_samples", 0)),
                         codecs.decode(blob, max_bytes=self.max_decoded))
        alive_regions = {self.peers[i].proto for i, (h, _, _) in finals.items()
                         if h is not None and self.peers[i].alive(t)}
        # backers: the live peers of a region that hold (hence publish the delta of) a state
        backers = Counter((self.peers[i].proto, h) for i, (h, _, _) in finals.items()
                          if h is not None and self.peers[i].alive(t))

        def weight(g: str, h: str, samples: int) -> float:  # the real merger's plausibility cap (weight_cap)
            return float(min(samples, weight_cap(max(1, backers[(g, h)]), self.cfg.max_inner_steps,
                                                 int(self.task.batch_size), self.cfg.cross_region_period)))
        out = {}
        for g in sorted(majority):
            holders = [self.peers[i] for i, (h, _, _) in finals.items() if h is not None and self.peers[i].proto == g
                       and self.peers[i].alive(t)]
            if not holders:
                continue
            gw_key = gateway_of((p.key for p in holders), r)  # the real merger's rule
            gw = next(p for p in holders if p.key == gw_key)
            got, done = [], t
            for g2 in sorted(deltas):
                if g2 == g:
                    continue
                if g2 not in alive_regions:  # nobody left to serve that region's delta
                    continue
                spec = self.net.spec(gw.region, g2)
                t_done = done + 2 * spec.latency_s * gw.lat + deltas[g2][1] / spec.bandwidth_Bps
                if t_done > end:
                    continue
                done = t_done
                got.append(g2)
                self.ledger.add(q, "cross", deltas[g2][1], "xdelta", gw.idx)
                for p in holders:
                    if p is not gw:
                        self.ledger.add(q, "intra", deltas[g2][1], "xdelta", p.idx)
            self.merge_done[g] = done + 2 * self.net.spec(g, g).latency_s
            for h in {h for i, (h, _, _) in finals.items() if h is not None and self.peers[i].proto == g}:
                st = self.states[h]
                own = codecs.encode(region_delta(st), self.cfg.codec, **self.cfg.codec_params)
                updates = [(sha256_hex(own), weight(g, h, int(st.extra.get("epoch_samples", 0))),
                            codecs.decode(own, max_bytes=self.max_decoded))]
                updates += [(deltas[g2][0], weight(g2, majority[g2], deltas[g2][2]), deltas[g2][3]) for g2 in got]
                merged = merge_region_deltas(st.anchor, updates)
                new = (merged_base(st, merged, len(got) + 1) if merged is not None
                       else merged_base(st, st.params))
                self.states.setdefault(new.hash, new)
                out[(g, h)] = new.hash
        self.merges += 1
        return out
