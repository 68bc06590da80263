"""Process-level helpers for the DHT node: coroutines run inside hivemind's DHT process, child
process and socket clean-up. Internal; ``SwarmDHT`` and ``dai_swarm.testing`` use them.

hivemind leaves ``/tmp/hivemind-*.sock`` files behind when a daemon dies hard (SPEC §10); we remove
only sockets we know are ours, or new ones that nobody listens on any more.
"""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import socket
import statistics
import time

__all__ = [
    "PING_PROTOCOL",
    "abort_process",
    "child_pids",
    "daemon_sockets",
    "get_many",
    "descendants",
    "hivemind_sockets",
    "owned_sockets",
    "ping_peer",
    "register_ping",
    "remove_files",
    "remove_stale_sockets",
    "routing_table_size",
    "socket_paths",
    "stop_process",
    "terminate_pids",
    "validator_counters",
    "watch_parent",
]

PING_PROTOCOL = "dai_swarm.ping"
_PING_BYTES = 8
SOCKET_GLOB = "/tmp/hivemind-*.sock"


async def _echo_handler(_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(16):
            data = await asyncio.wait_for(reader.readexactly(_PING_BYTES), timeout=5.0)
            writer.write(data)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def register_ping(_dht, node) -> None:
    """(In the DHT process) serve the 8-byte echo protocol used for RTT measurements."""
    await node.p2p.add_binary_stream_handler(PING_PROTOCOL, _echo_handler)


async def ping_peer(_dht, node, peer_id: str, timeout_s: float, echoes: int) -> float | None:
    """(In the DHT process) median RTT of ``echoes`` echoes to ``peer_id``; None if it fails."""
    from hivemind.p2p import PeerID

    try:
        target = PeerID.from_base58(peer_id)
        _, reader, writer = await asyncio.wait_for(node.p2p.call_binary_stream_handler(target, PING_PROTOCOL), timeout_s)
    except Exception:
        return None
    rtts = []
    try:
        for _ in range(max(1, echoes)):
            nonce = os.urandom(_PING_BYTES)
            start = time.perf_counter()
            writer.write(nonce)
            await writer.drain()
            if await asyncio.wait_for(reader.readexactly(_PING_BYTES), timeout_s) != nonce:
                return None
            rtts.append(time.perf_counter() - start)
    except Exception:
        return None
    finally:
        writer.close()
    return statistics.median(rtts)


async def validator_counters(_dht, node) -> dict:
    """(In the DHT process) the SwarmRecordValidator's counters (empty without one)."""
    from .validator import SwarmRecordValidator

    out: dict = {}
    composite = node.protocol.record_validator
    for v in getattr(composite, "_validators", []):
        if isinstance(v, SwarmRecordValidator):
            out.update(v.counters)
    return out


async def socket_paths(_dht, node) -> list:
    """(In the DHT process) the unix socket files of this node's p2pd and its client."""
    paths = []
    for maddr in (node.p2p.daemon_listen_maddr, getattr(node.p2p, "_client_listen_maddr", None)):
        try:
            paths.append(maddr["unix"])
        except Exception:
            continue
    return paths


def hivemind_sockets() -> set[str]:
    """Paths of all ``/tmp/hivemind-*.sock`` files now."""
    return set(glob.glob(SOCKET_GLOB))


def _listening(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def remove_files(paths) -> None:
    """Remove these files if they exist."""
    for p in paths:
        try:
            os.remove(p)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass


def remove_stale_sockets(paths) -> list[str]:
    """Remove those of ``paths`` that are sockets nobody listens on; return what was removed."""
    removed = [p for p in sorted(paths) if os.path.exists(p) and not _listening(p)]
    remove_files(removed)
    return removed


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc); empty if unknown."""
    out: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task) as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def terminate_pids(pids, grace_s: float = 3.0) -> None:
    """SIGTERM these processes (our own children), then SIGKILL those still alive after ``grace_s``."""
    pids = [p for p in pids if _alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def abort_process(proc, grace_s: tuple[float, float] = (2.0, 2.0)) -> None:
    """Stop a DHT process whose start failed or was interrupted, and its p2pd. It is frozen first
    (SIGSTOP), so that it cannot start a p2pd after its children are listed (a p2pd started in that
    window outlived it, orphaned, and kept its socket file), then killed; its children get SIGTERM."""
    if proc.pid is None:  # never started
        return
    try:
        os.kill(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        pass
    children = child_pids(proc.pid)
    sockets = [path for pid in children for path in daemon_sockets(pid)]  # its p2pd's, if it started one
    if proc.is_alive():
        proc.kill()  # SIGKILL ends a stopped process; a failed start has nothing to flush
        proc.join(grace_s[0])
    if not proc.is_alive():
        proc.join(0)  # reap it and drop it from multiprocessing's children
    terminate_pids(children)
    # a p2pd that had to be SIGKILLed keeps its socket file, and may still listen for a moment
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(os.path.exists(p) and _listening(p) for p in sockets):
        time.sleep(0.05)
    remove_stale_sockets(sockets)


def stop_process(proc, grace_s: tuple[float, float] = (2.0, 2.0)) -> bool:
    """SIGTERM a multiprocessing child still alive, SIGKILL it after ``grace_s[0]``, and join it (so that
    multiprocessing's exit handler has nothing left to join); True if it is gone."""
    if proc.pid is None:  # never started
        return True
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s[0])
    if proc.is_alive():
        proc.kill()
        proc.join(grace_s[1])
    if not proc.is_alive():
        proc.join(0)  # reap it and drop it from multiprocessing's children
    return not proc.is_alive()


async def routing_table_size(_dht, node) -> int:
    """(In the DHT process) how many DHT peers this node knows."""
    return len(node.protocol.routing_table.uid_to_peer_id)


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (children first, depth-first)."""
    out: list[int] = []
    for child in child_pids(pid):
        out.append(child)
        out += descendants(child)
    return out


def daemon_sockets(pid: int) -> list[str]:
    """The unix sockets of a p2pd process (its ``-listen`` socket and the matching client socket)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return []
    for arg in args:
        if arg.startswith("-listen=/unix/tmp/hivemind-p2pd-"):
            path = arg[len("-listen=/unix"):]
            return [path, path.replace("hivemind-p2pd-", "hivemind-p2pclient-")]
    return []


def owned_sockets(pids) -> list[str]:
    """``/tmp/hivemind-*`` unix sockets that these processes hold open (Linux /proc): what a process
    that exits without hivemind's clean-up (``os._exit``, a kill) would leave behind."""
    inodes = set()
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    try:
        with open("/proc/net/unix") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("/tmp/hivemind-"):
                    out.append(fields[7])
    except OSError:
        return []
    return sorted(set(out))


def watch_parent(parent_pid: int, period_s: float = 0.5) -> None:
    """(In the DHT process) if the parent dies, stop our p2pd and exit, leaving no orphans."""
    import threading

    def _watch() -> None:
        while True:
            time.sleep(period_s)
            if os.getppid() != parent_pid:
                pids = descendants(os.getpid())
                sockets = [q for p in pids for q in daemon_sockets(p)]
                terminate_pids(pids, grace_s=1.0)
                remove_files(sockets)
                os._exit(0)

    threading.Thread(target=_watch, name="dai-swarm-parent-watch", daemon=True).start()


async def get_many(dht, node, keys: list) -> dict:
    """Runs inside the DHT process: the latest value of each of ``keys``, found in one traversal."""
    return await node.get_many(keys, sufficient_expiration_time=float("inf"))  # latest values, as get(latest=True)
