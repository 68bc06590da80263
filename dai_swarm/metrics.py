"""What a person sees of a running peer: Prometheus metrics, ``/status.json`` and the dashboard.

``dai-swarm peer --metrics-port P`` starts a :class:`MetricsServer` on ``127.0.0.1:P``::

    GET /metrics       Prometheus text exposition format 0.0.4
    GET /status.json   the status document (below), for the dashboard, the demo and scripts
    GET /              the live dashboard (static HTML + JS shipped in dai_swarm/static/)

A collector thread builds the status document every ``refresh_s`` seconds from the peer's
runtime and the run's signed peer records in the DHT; HTTP threads only serve the cached copy, so
a slow scraper never blocks training and a slow DHT never blocks a scrape. The document::

    {"run_id", "peer_id", "public_key", "region", "time", "round", "steps", "samples",
     "samples_per_s", "state_hash", "val_loss", "rounds_trained", "resyncs",
     "traffic": {"sent": {"intra", "cross"}, "received": {...}},
     "peers": [{"peer_id", "region", "round", "state_hash", "val_loss", "samples", "age_s", "self"}],
     "regions": {"eu": 2, ...}, "agreement": {"round", "state_hash", "agree", "total", "region"} | null,
     "region_agreement": {"eu": {...} | null, ...},
     "history": [{"round", "updates", "state_hash", "agreed", "val_loss", "samples", "swarm_samples", ...}],
     "reputation"?, "rewards"?, "verification_latency_s"?, "slashes"?, "verdicts"?}

The keys marked ``?`` appear only when the runtime reports them (``runtime.metrics()`` or the
per-round history); nothing is invented when a subsystem is not running.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Mapping

from .errors import ConfigError, NetworkError
from .logging import get_logger

__all__ = ["OPTIONAL_KEYS", "MetricsServer", "render_prometheus", "swarm_collector"]

logger = get_logger(__name__)

OPTIONAL_KEYS = ("reputation", "rewards", "verification_latency_s", "slashes", "verdicts", "round_s")
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
                "dashboard.css": "text/css; charset=utf-8"}
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HISTORY_KEEP = 500


# --- the status document -----------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _slim_history(history: list[Mapping]) -> list[dict]:
    out, total = [], 0
    for h in history[-HISTORY_KEEP:]:
        total += int(h.get("samples") or 0)
        entry = {k: h.get(k) for k in ("round", "updates", "state_hash", "agreed", "resynced", "val_loss", "samples",
                                       "time", "traffic")}
        entry["swarm_samples"] = total
        for key in OPTIONAL_KEYS:
            if key in h:
                entry[key] = h[key]
        out.append(entry)
    return out


def _agreement(peers: list[dict], region: str | None = None) -> dict | None:
    """Among peers (of ``region``) that report a state hash: the majority hash and how many share it.

    Regions hold different states between cross-region merges, so agreement is per region. The
    round compared is the one most peers report (a peer a round behind is not counted as dissent).
    """
    reported = [(p["round_closed"], p["state_hash"]) for p in peers
                if p.get("state_hash") and p.get("round_closed") is not None and region in (None, p["region"])]
    if not reported:
        return None
    newest = max(r for r, _ in reported)
    # peers a round behind may not have closed the newest round yet: compare at the round most report
    rounds = Counter(r for r, _ in reported)
    at = max(rounds, key=lambda r: (rounds[r], r == newest, r))
    hashes = Counter(h for r, h in reported if r == at)
    top, agree = hashes.most_common(1)[0]
    return {"round": at, "state_hash": top, "agree": agree, "total": sum(hashes.values()), "region": region}


def _add_trust(doc: dict, m: Mapping, history: list[Mapping], extra: Mapping) -> None:
    """Reputation, rewards, verification figures and slashes, only where the runtime reports them."""
    for key in OPTIONAL_KEYS:
        if key in m and m[key] is not None:
            doc[key] = m[key]
        elif history and history[-1].get(key) is not None:
            doc[key] = history[-1][key]
    trust = m.get("trust") if isinstance(m.get("trust"), Mapping) else {}
    if trust.get("reputation") is not None:
        doc.setdefault("reputation", trust["reputation"])
    if trust.get("latency_s_mean") is not None:
        doc.setdefault("verification_latency_s", trust["latency_s_mean"])
    counters = {k: trust[k] for k in ("checks", "rechecks", "fails", "invalid_verdicts", "slashed") if k in trust}
    if counters:
        doc["verification"] = counters
    table = extra.get("reputation") if isinstance(extra.get("reputation"), Mapping) else None
    if table is not None:
        for p in doc["peers"]:
            if p.get("public_key") in table:
                p["reputation"] = table[p["public_key"]]
    records = extra.get("trust") if isinstance(extra.get("trust"), Mapping) else None
    if records is not None and "slashes" not in doc:
        at = int(extra.get("trust_round", 0) or 0)
        doc["slashes"] = sorted(k for k, v in records.items()
                                if isinstance(v, (list, tuple)) and len(v) == 2 and int(v[1]) > at)


def swarm_collector(swarm: Any) -> Callable[[], dict]:
    """Return a function that builds the status document of ``swarm`` (a :class:`dai_swarm.Swarm`)."""
    rate = {"t": None, "samples": 0, "value": None}

    def collect() -> dict:
        rt = swarm.runtime
        m = dict(rt.metrics())
        now = time.time()
        doc: dict[str, Any] = {
            "run_id": swarm.manifest.run_id, "peer_id": swarm.dht.peer_id, "public_key": swarm.identity.public_key_hex,
            "region": swarm.region, "time": now, "task": swarm.manifest.task,
            "round_s": m.get("round_s") or swarm.manifest.round_s, "schedule": m.get("schedule"),
            **{k: m.get(k) for k in ("round", "steps", "samples", "state_hash", "val_loss", "rounds_trained", "resyncs",
                                     "traffic", "dropped_records")},
        }
        if rate["t"] is not None and now - rate["t"] >= 0.5:
            rate["value"] = max(0.0, (m["samples"] - rate["samples"]) / (now - rate["t"]))
        if rate["t"] is None or now - rate["t"] >= 5.0:
            rate["t"], rate["samples"] = now, m["samples"]
        doc["samples_per_s"] = rate["value"]
        history = list(rt.history)
        doc["history"] = _slim_history(history)
        last_closed = history[-1]["round"] if history else None
        peers = []
        try:
            for signed in swarm.dht.peer_records(swarm.manifest.run_id):
                rec, pm = signed.record, signed.record.metrics or {}
                peers.append({"peer_id": rec.peer_id, "public_key": rec.public_key, "region": rec.region,
                              "round": pm.get("round"),
                              "state_hash": pm.get("state_hash"), "val_loss": _num(pm.get("val_loss")),
                              "samples": pm.get("samples"), "round_closed": pm.get("round_closed"),
                              "age_s": round(max(0.0, now - signed.issued_at), 1), "self": rec.peer_id == doc["peer_id"]})
        except Exception as e:  # the DHT is busy or shutting down: show what we know about ourselves
            logger.debug("peer list for the status document failed: %s", e)
        if not any(p["self"] for p in peers):
            peers.append({"peer_id": doc["peer_id"], "public_key": doc["public_key"], "region": doc["region"],
                          "round": doc["round"],
                          "state_hash": doc["state_hash"], "val_loss": _num(doc["val_loss"]), "samples": doc["samples"],
                          "round_closed": last_closed, "age_s": 0.0, "self": True})
        for p in peers:
            if p["self"]:
                p["round_closed"] = last_closed
        peers.sort(key=lambda p: (p["region"], p["peer_id"]))
        doc["peers"] = peers
        doc["regions"] = dict(sorted(Counter(p["region"] for p in peers).items()))
        doc["agreement"] = _agreement(peers, doc["region"])
        doc["region_agreement"] = {r: _agreement(peers, r) for r in doc["regions"]}
        _add_trust(doc, m, history, getattr(rt.bases.latest(), "extra", None) or {})
        return doc

    return collect


# --- Prometheus text exposition ------------------------------------------------------------------
def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def render_prometheus(doc: Mapping[str, Any]) -> str:
    """Render a status document as Prometheus text exposition format 0.0.4 (one family per metric)."""
    families: list[tuple[str, str, str, list[tuple[dict, float]]]] = []

    def add(name: str, kind: str, help_text: str, samples: list[tuple[dict, Any]]) -> None:
        kept = [(labels, float(v)) for labels, v in samples if _num(v) is not None]
        if kept:
            families.append((name, kind, help_text, kept))

    add("dai_swarm_info", "gauge", "This peer: run, peer id, region (value is always 1).",
        [({"run_id": doc.get("run_id", ""), "peer_id": doc.get("peer_id", ""), "region": doc.get("region", ""),
           "task": doc.get("task", "")}, 1)])
    add("dai_swarm_round", "gauge", "Round this peer is training.", [({}, doc.get("round"))])
    add("dai_swarm_round_seconds", "gauge", "Length of the current round (adapts to the swarm).",
        [({}, doc.get("round_s"))])
    add("dai_swarm_inner_steps", "gauge", "Inner steps done in the current round.", [({}, doc.get("steps"))])
    add("dai_swarm_samples_total", "counter", "Dataset items this peer trained on.", [({}, doc.get("samples"))])
    add("dai_swarm_samples_per_second", "gauge", "Training throughput of this peer.", [({}, doc.get("samples_per_s"))])
    add("dai_swarm_val_loss", "gauge", "Validation loss of the newest agreed state.", [({}, doc.get("val_loss"))])
    add("dai_swarm_rounds_trained_total", "counter", "Rounds this peer contributed an update to.",
        [({}, doc.get("rounds_trained"))])
    add("dai_swarm_resyncs_total", "counter", "Rounds this peer re-synced its state from others.",
        [({}, doc.get("resyncs"))])
    traffic = doc.get("traffic") or {}
    add("dai_swarm_bytes_total", "counter", "Payload bytes by direction and link class (intra/cross region).",
        [({"direction": d, "link": link}, v) for d in ("sent", "received")
         for link, v in sorted((traffic.get(d) or {}).items())])
    add("dai_swarm_peers", "gauge", "Live peers of the run by region (signed peer records in the DHT).",
        [({"region": r}, n) for r, n in sorted((doc.get("regions") or {}).items())])
    history = doc.get("history") or []
    if history:
        last = history[-1]
        add("dai_swarm_last_round_closed", "gauge", "Newest round this peer closed and tallied.", [({}, last.get("round"))])
        add("dai_swarm_last_round_updates", "gauge", "Updates included in the newest closed round.",
            [({}, last.get("updates"))])
    agreement = doc.get("agreement")
    if agreement and agreement.get("total"):
        add("dai_swarm_state_agreement_ratio", "gauge", "Share of this region's reporting peers on its majority state hash.",
            [({}, agreement["agree"] / agreement["total"])])
    add("dai_swarm_dropped_records_total", "counter", "DHT records dropped by the validator, by reason.",
        [({"reason": k}, v) for k, v in sorted((doc.get("dropped_records") or {}).items()) if k != "accepted"])
    rep = doc.get("reputation")
    add("dai_swarm_reputation", "gauge", "This peer's reputation in the newest agreed state.",
        [({}, rep)] if not isinstance(rep, Mapping) else [({"public_key": k}, v) for k, v in sorted(rep.items())])
    rewards = doc.get("rewards")
    add("dai_swarm_rewards_total", "counter", "Rewards credited to this peer in its reward log.",
        [({}, rewards)] if not isinstance(rewards, Mapping) else [({"kind": k}, v) for k, v in sorted(rewards.items())])
    add("dai_swarm_verification_latency_seconds", "gauge", "Time from a round's close to its spot-check verdicts.",
        [({}, doc.get("verification_latency_s"))])
    slashes = doc.get("slashes")
    add("dai_swarm_slashed_peers", "gauge", "Keys slashed (weight 0) in the newest agreed state.",
        [({}, len(slashes) if isinstance(slashes, (list, tuple)) else slashes)])
    ver = doc.get("verification") or {}
    add("dai_swarm_spot_checks_total", "counter", "Updates this peer recomputed, by kind.",
        [({"kind": k}, ver.get(k)) for k in ("checks", "rechecks")])
    add("dai_swarm_spot_check_fails_total", "counter", "Fail verdicts this peer issued.", [({}, ver.get("fails"))])
    lines = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {_fmt(value)}" if labels else f"{name} {_fmt(value)}")
    return "\n".join(lines) + "\n"


# --- the HTTP server -----------------------------------------------------------------------------
def _static(name: str) -> bytes:
    return resources.files("dai_swarm").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        if path == "/metrics":
            body, ctype = owner.prometheus_bytes(), PROMETHEUS_CONTENT_TYPE
        elif path == "/status.json":
            body, ctype = owner.status_bytes(), "application/json"
        elif path in ("/", "/index.html"):
            body, ctype = _static("index.html"), STATIC_FILES["index.html"]
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
            name = path[len("/static/"):]
            body, ctype = _static(name), STATIC_FILES[name]
        else:
            body, ctype = b"not found\n", "text/plain; charset=utf-8"
            self.send_response(404)
            self._finish(body, ctype)
            return
        self.send_response(200)
        self._finish(body, ctype)

    def _finish(self, body: bytes, ctype: str) -> None:
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("metrics http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "MetricsServer"


class MetricsServer:
    """Serve ``/metrics``, ``/status.json`` and the dashboard for one status source.

    ``collect`` returns the status document (see the module docstring; :func:`swarm_collector`
    builds one for a :class:`dai_swarm.Swarm`). ``port=0`` picks a free port (see :attr:`port`).
    """

    def __init__(self, collect: Callable[[], Mapping[str, Any]], host: str = "127.0.0.1", port: int = 0,
                 refresh_s: float = 1.0):
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"metrics port must be in 0..65535, got {port}")
        self.collect, self.refresh_s = collect, float(refresh_s)
        self._lock = threading.Lock()
        self._doc: Mapping[str, Any] = {}
        self._stop = threading.Event()
        try:
            self._http = _Server((host, int(port)), _Handler)
        except OSError as e:
            raise NetworkError(f"cannot serve metrics on {host}:{port}: {e.strerror}; pick another --metrics-port "
                               "or 0 for a free one") from e
        self._http.owner = self
        self._threads = [threading.Thread(target=self._http.serve_forever, name="dai-swarm-metrics-http", daemon=True),
                         threading.Thread(target=self._collect_main, name="dai-swarm-metrics-collect", daemon=True)]

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        """``http://host:port/``: the dashboard's address."""
        return f"http://{self._http.server_address[0]}:{self.port}/"

    def refresh(self) -> Mapping[str, Any]:
        """Rebuild the status document now and return it (errors keep the previous one)."""
        try:
            doc = self.collect()
        except Exception as e:
            logger.debug("status collection failed: %s", e)
            return self._doc
        with self._lock:
            self._doc = doc
        return doc

    def _collect_main(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    def status_bytes(self) -> bytes:
        """The cached status document as JSON (non-finite numbers become null)."""
        with self._lock:
            doc = self._doc
        return json.dumps(_finite(doc), default=str).encode()

    def prometheus_bytes(self) -> bytes:
        """The cached status document in Prometheus text format."""
        with self._lock:
            doc = self._doc
        return render_prometheus(doc).encode()

    def start(self) -> "MetricsServer":
        """Collect once, then serve on daemon threads; returns self."""
        self.refresh()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving and collecting. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._threads[0].is_alive():
            self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
