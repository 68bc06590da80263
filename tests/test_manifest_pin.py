"""Self-certifying runs: the manifest hash pin, founder signatures and the back-dating window
(finding "run manifest hijack"). Pure and fast: envelopes are sealed and opened in memory."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from dai_swarm.dht.envelope import MAX_CLOCK_SKEW_S, open_envelope, seal
from dai_swarm.dht.manifest import MAX_LEAD_S, PIN_HEX, check_pin, manifest_hash, select_manifest
from dai_swarm.dht.records import RunManifest
from dai_swarm.errors import ConfigError, ManifestMismatch, ManifestPinMismatch
from dai_swarm.identity import Identity
from dai_swarm.swarm import Swarm

RUN = "pinned-run"
T0 = float(int(time.time()) + 5)
CREATOR, ROGUE = Identity.generate(), Identity.generate()


def _manifest(founder: Identity, **changes) -> RunManifest:
    base = dict(run_id=RUN, task="regression", task_config_hash="ab" * 32, round_s=5.0, cross_region_period=3,
                max_inner_steps=20, outer_lr=0.6, outer_momentum=0.9, codec="int8", checks_per_update=0.2, seed=0,
                t0=T0, versions={"torch": "2.13.0"}, founders=(founder.public_key_hex,))
    base.update(changes)
    return RunManifest(**base)


def _signed(signer: Identity, manifest: RunManifest, issued_at: float, ttl_s: float = 7 * 24 * 3600.0):
    data = seal(signer, manifest, run_id=RUN, ttl_s=ttl_s, issued_at=issued_at)
    return open_envelope(data, now=max(time.time(), issued_at))  # read when it was issued at the latest


HONEST = _manifest(CREATOR)
HONEST_REC = _signed(CREATOR, HONEST, T0 - 2.0)
PIN = manifest_hash(HONEST)[:PIN_HEX]


def _backdated_copy():
    """The attack: a copy with spot checks off, by another key, issued six days before t0."""
    evil = _manifest(ROGUE, checks_per_update=0.0)
    return evil, _signed(ROGUE, evil, T0 - 6 * 24 * 3600.0)


def test_backdated_copy_is_refused_with_and_without_a_pin():
    evil, rec = _backdated_copy()
    for records in ([HONEST_REC, rec], [rec, HONEST_REC]):
        unpinned = select_manifest(records)
        assert unpinned.manifest == HONEST and not unpinned.pinned
        assert "back-dated" in unpinned.refused[manifest_hash(evil)]
        pinned = select_manifest(records, PIN)
        assert pinned.manifest == HONEST and pinned.pinned and pinned.hash.startswith(PIN)


def test_altered_manifest_under_a_pinned_run_id_is_a_clear_error():
    evil = _manifest(ROGUE, checks_per_update=0.0)
    rec = _signed(ROGUE, evil, T0 - 1.0)  # not back-dated: only the pin tells it apart
    assert select_manifest([rec]).manifest == evil  # an unpinned newcomer alone with it cannot know
    with pytest.raises(ManifestPinMismatch) as err:
        select_manifest([rec], PIN)
    e = err.value
    assert isinstance(e, ManifestMismatch) and e.expected == PIN
    assert PIN in str(e) and manifest_hash(evil)[:PIN_HEX] in str(e) and "checks_per_update 0.0" in str(e)
    assert len(e.found) == 1 and e.found[0].startswith(manifest_hash(evil)[:PIN_HEX])
    assert select_manifest([], PIN) is None  # nothing seen yet: the caller waits


def test_in_window_competitor_wins_only_without_a_pin():
    """The limit of the unpinned rule (documented): a rival issued earlier inside the window is taken
    by a newcomer without a pin; a pinned newcomer still takes the run's own manifest."""
    rival = _manifest(ROGUE, checks_per_update=0.0)
    rec = _signed(ROGUE, rival, T0 - 3600.0)
    choice = select_manifest([HONEST_REC, rec])
    assert choice.manifest == rival and choice.competing == (manifest_hash(HONEST),)
    assert select_manifest([HONEST_REC, rec], PIN).manifest == HONEST


def test_only_a_founder_signature_counts():
    copy = _signed(ROGUE, HONEST, T0 - 10.0)  # the honest body, re-signed by another key, issued earlier
    both = select_manifest([copy, HONEST_REC])  # same content: the founder's record is the one that counts
    assert both.manifest == HONEST and "not by a founder" in both.refused[manifest_hash(HONEST)]
    assert select_manifest([copy]) is None
    with pytest.raises(ManifestPinMismatch, match="not by a founder"):
        select_manifest([copy], PIN)
    nobody = _manifest(CREATOR, founders=())
    assert select_manifest([_signed(CREATOR, nobody, T0 - 1.0)]) is None
    with pytest.raises(ValueError):
        _manifest(CREATOR, founders=("AB" * 32,))


def test_issue_time_window():
    late = _signed(CREATOR, HONEST, T0 + MAX_CLOCK_SKEW_S + 5.0)
    assert select_manifest([late]) is None
    early = _signed(CREATOR, HONEST, T0 - MAX_LEAD_S - 5.0)
    assert select_manifest([early]) is None
    assert select_manifest([_signed(CREATOR, HONEST, T0 - MAX_LEAD_S + 5.0)]).manifest == HONEST
    assert select_manifest([_signed(CREATOR, HONEST, T0 + MAX_CLOCK_SKEW_S - 5.0)]).manifest == HONEST


def test_pin_format():
    full = manifest_hash(HONEST)
    assert len(full) == 64 and check_pin(full.upper()) == full and check_pin(None) is None
    assert check_pin(" " + full[:PIN_HEX] + " ") == full[:PIN_HEX]
    for bad in (full[:16], full[:PIN_HEX - 1], "zz" * 16, full + "0"):
        with pytest.raises(ConfigError):
            check_pin(bad)
    # the hash covers every field, founders included
    assert manifest_hash(_manifest(ROGUE)) != full
    assert manifest_hash(_manifest(CREATOR, seed=1)) != full


class _FakeDHT:
    """The part of SwarmDHT that Swarm's manifest agreement uses."""

    def __init__(self, records):
        self.records, self.published = list(records), []

    def manifest_choice(self, run_id, manifest_hash=None):
        return select_manifest(self.records, check_pin(manifest_hash))

    def publish_manifest(self, manifest):
        self.published.append(manifest)
        self.records.append(_signed(CREATOR, manifest, time.time()))


def _swarm(records, pin=None):
    s = Swarm.__new__(Swarm)
    s.dht, s.pin = _FakeDHT(records), check_pin(pin)
    return s


def test_swarm_agreement_refuses_another_manifest_and_never_creates_when_pinned():
    evil, rec = _backdated_copy()
    altered = _signed(ROGUE, _manifest(ROGUE, checks_per_update=0.0), T0 - 1.0)
    assert _swarm([rec, HONEST_REC], PIN)._agree_manifest(HONEST, wait_s=0.0) == HONEST
    assert _swarm([rec, HONEST_REC])._agree_manifest(HONEST, wait_s=0.0) == HONEST
    with pytest.raises(ManifestPinMismatch, match=PIN):
        _swarm([altered], PIN)._agree_manifest(HONEST, wait_s=0.3)
    lonely = _swarm([], PIN)
    with pytest.raises(ConfigError, match="never creates"):
        lonely._agree_manifest(HONEST, wait_s=0.0)
    assert lonely.dht.published == []
    creator = _swarm([])
    fresh = _manifest(CREATOR, t0=float(int(time.time()) + 3))
    assert creator._agree_manifest(fresh, wait_s=0.0) == fresh and creator.dht.published == [fresh]
    with pytest.raises(ConfigError, match="t0"):
        _swarm([])._agree_manifest(_manifest(CREATOR, t0=time.time() - 3600), wait_s=0.0)


def test_join_line():
    s = SimpleNamespace(manifest=HONEST, manifest_hash=manifest_hash(HONEST), initial_peers=["/ip4/1.2.3.4/tcp/5/p2p/X"])
    line = Swarm.join_line.fget(s)
    assert line == f"--run-id {RUN} --manifest {PIN} --initial-peers /ip4/1.2.3.4/tcp/5/p2p/X"
