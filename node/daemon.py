"""`ler node run`: the asyncio daemon that owns the store, consensus, gossip, sync and the HTTP server.

The running parts, each an owned task of one TaskGroup:
  driver    node/validator.py: Tendermint for this node; the only writer of blocks (consensus and sync)
  network   node/peers.py: the peer HTTP client, per-peer outbound queues, the gossip repair tick
  sync      node/sync.py: fetches blocks when a peer is ahead (all an observer does besides serving)
and the aiohttp server for /v1, /health, /metrics and /peer/v1.

One structured log line per event on stderr (key=value). SIGINT, SIGTERM and SIGHUP stop it cleanly: sync
stops, the driver finishes the height in progress (a block being written completes its one atomic
batch; a height still collecting its batch is made, within a grace period) and starts no other,
clients still waiting for a commit are answered, gossip stops, the server stops, the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ler.keys import KeyPair
from node.api import make_app
from node.config import CONFIG_FILE, ConfigError, NodeConfig, listen_text
from node.listener import (
    LINGER_S,
    MAX_HEADER,
    MAX_REQUEST_LINE,
    PEER_CONNECTIONS,
    AnswerWatch,
    CappedSite,
    RateLimitedWarning,
    connection_cap,
    fewest_connections,
    quiet_accept_errors,
    raise_fd_limit,
)
from node.peers import KeyUsedElsewhere, Network
from node.procs import node_running_on
from node.service import NodeService, now_ms
from node.sync import Syncer, block_routes
from node.validator import ConsensusDriver
from storage.chain import StoreError

log = logging.getLogger("ler.node")

SHUTDOWN_TIMEOUT_S = 5.0  # longest wait for requests still running when the server stops


class MalformedHttpFilter(logging.Filter):
    """aiohttp answers a request it cannot parse (a NUL in a header, a line too long) with 400 itself, and
    logs it as an ERROR with a traceback. That is the client's fault, not the node's: one WARNING line
    with the sender and the reason, as the node's own events are logged, and at most one a minute (with
    the count since the last), so that a client sending nothing else cannot fill the disk with them."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = RateLimitedWarning("bad_http_request", "a request that is not HTTP was answered 400")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError):
            # A body whose encoding does not decode: answered 400 already (node.listener.reading_body),
            # then met again as aiohttp reads on past it before reusing the connection. Not the node's fault.
            return False
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            why = " ".join(str(exc.message or exc).split())[:200]
            self.refused.hit(remote=remote, status=exc.code, why=repr(why))
            return False
        return True


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHttpFilter) for f in server.filters):
        server.addFilter(MalformedHttpFilter())


class Node:
    """The parts of a running node, wired together (also what the API shows of the network side)."""

    def __init__(self, config: NodeConfig, key: KeyPair) -> None:
        self.svc = NodeService(config, key)
        self.driver = ConsensusDriver(self.svc)
        self.network = Network(self.svc, self.driver)
        self.driver.outbox = self.network
        self.syncer = Syncer(self.svc, self.driver, self.network)
        self.driver.peer_heights = self.syncer.peer_heights

    # --- NetworkView ----------------------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.driver.round

    @property
    def peers_connected(self) -> int:
        return self.network.connected

    @property
    def peers_known(self) -> int:
        return len(self.network.links)

    @property
    def syncing(self) -> bool:
        return self.syncer.syncing

    @property
    def sync_lag(self) -> int:
        return self.syncer.lag

    @property
    def held_until(self) -> int:
        return self.driver.held_until

    @property
    def voted_in_height(self) -> int | None:
        return self.driver.voted_in_height

    @property
    def own_key_evidence(self) -> int | None:
        return self.network.own_key_evidence

    def app(self) -> web.Application:
        return make_app(self.svc, self, [*self.network.routes(), *block_routes(self.svc)])


async def serve(config: NodeConfig, key: KeyPair, stop: asyncio.Event) -> None:
    refuse_if_running(config)
    node = Node(config, key)
    svc = node.svc
    try:
        # The store is open (its folder lock held): this process is the data folder's node until it exits.
        write_pid_file(config.pid_path)
        reloaded = svc.reload_pending()
        limits = config.limits
        quiet_accept_errors(asyncio.get_running_loop())
        fd_limit = raise_fd_limit()
        cap = connection_cap(limits.max_connections, fd_limit, len(config.peers))
        if cap < limits.max_connections:
            log.warning("event=max_connections_lowered max_connections=%d open_file_limit=%d reason=%r",
                        cap, fd_limit, "the open-file limit leaves room for no more beside the database's "
                                       "files and the peers; raise it (ulimit -n) to allow more")
        fewest = fewest_connections(len(config.peers))
        if cap < fewest:
            log.warning("event=max_connections_low max_connections=%d peers=%d reason=%r", cap,
                        len(config.peers), f"each peer may hold {PEER_CONNECTIONS} connections to this node and "
                        "clients need some too: with so few, peers' messages and clients' requests are "
                        f"refused in turn; allow at least {fewest} ([limits] max_connections, ulimit -n)")
        if 0 < limits.max_connections_per_address < PEER_CONNECTIONS and config.peers:
            log.warning("event=max_connections_per_address_low max_connections_per_address=%d reason=%r",
                        limits.max_connections_per_address, f"a peer may hold {PEER_CONNECTIONS} connections "
                        "to this node (a message and a height poll overlapping): with fewer, its messages are "
                        f"refused in turn; allow at least {PEER_CONNECTIONS}")
        runner = web.AppRunner(node.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S, keepalive_timeout=limits.idle_timeout_s,
                               lingering_time=LINGER_S, max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_HEADER)
        await runner.setup()
        site = CappedSite(runner, config.host, config.port, cap, limits.max_connections_per_address,
                          reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise listen_error(config, exc) from None
        svc.metrics.connections = lambda: (site.open_connections, site.refused)
        watch = AnswerWatch(lambda: runner.server, limits.body_timeout_s)
        log.info("event=node_started chain=%s height=%d node=%s role=%s url=%s pending_reloaded=%d "
                 "validator=%s peers=%d", svc.chain_id, svc.store.height, key.did, config.role, config.url,
                 reloaded, svc.is_validator, len(node.network.links))
        if config.role == "authority" and not svc.is_validator:
            log.warning("event=not_a_validator node=%s height=%d reason=%r", key.did, svc.store.height,
                        f"its key is not an authority at height {svc.store.height + 1}: it follows the chain "
                        "without voting, and votes from the height a governance vote (ler authority add) adds "
                        "it; if it should be an authority now, check its node.key")
        ahead_s = (svc.store.genesis.genesis_time - now_ms()) / 1000
        if ahead_s > config.consensus.max_drift_ms / 1000:
            log.warning("event=genesis_in_future seconds_ahead=%.0f reason=%r", ahead_s,
                        "no block can be made before the genesis time: every node refuses a block time "
                        "that far ahead of its clock")
        found: list[StoreError] = []  # damage found in the database while running (`stop_on_damage`)
        try:
            async with asyncio.TaskGroup() as tg:
                network = tg.create_task(node.network.run(), name="network")
                sync = tg.create_task(node.syncer.run(), name="sync")
                driver = tg.create_task(node.driver.run(), name="driver")
                answers = tg.create_task(watch.run(), name="answers")
                damage = tg.create_task(stop_on_damage(svc, stop, found), name="damage")
                twin = tg.create_task(stop_on_key_elsewhere(node.network, stop), name="twin")
                await stop.wait()
                log.info("event=node_stopping height=%d", svc.store.height)
                svc.stop()
                sync.cancel()
                # No cancel for the driver: it returns once the height in progress is done (or its
                # grace period passed), and a block being written always finishes its atomic batch.
                node.driver.stop()
                await driver
                await cancelled([sync, network, answers, damage, twin])
            # Stopped as on SIGTERM for one of these; the exit says why.
            if found:
                raise found[0]
            if node.network.key_elsewhere.is_set():
                raise KeyUsedElsewhere(node.network.key_elsewhere_reason)
        finally:
            # No block comes after this (a stop, or a part of the node failing, a full disk say): clients
            # still waiting on pending transactions get their answer now, not a dropped connection.
            svc.stop()
            await svc.release_waiters()
            await runner.cleanup()
            # A request cancelled by the server's shutdown may still have store work running in a
            # worker thread (a bundle being built, pending txs being written): let it finish before
            # the store closes under it.
            await asyncio.get_running_loop().shutdown_default_executor()
    finally:
        svc.close()
        remove_pid_file(config.pid_path)
        log.info("event=node_stopped")


async def cancelled(tasks: list[asyncio.Task[Any]], again_after_s: float = 0.5) -> None:
    """Cancel `tasks` and return once every one has ended, cancelling again any still running after
    `again_after_s`. On Python 3.11 `asyncio.wait_for` can lose a cancellation that lands just as its own
    timeout fires, and the task then goes on: block sync's loop, which waited so several times a second,
    once kept a stopping node's task group, and so the process, from ever ending. The node's loops wait
    with `asyncio.timeout` instead, which keeps the cancellation; this is the safeguard for any wait that
    does not."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after_s)


async def stop_on_key_elsewhere(network: Network, stop: asyncio.Event) -> None:
    """Wait for the network to see another running node sign with this authority's key, then stop the
    node as SIGTERM does; `serve` then raises it, so that the exit says why (see `Network._own_key_seen`)."""
    await network.key_elsewhere.wait()
    stop.set()


async def stop_on_damage(svc: NodeService, stop: asyncio.Event, found: list[StoreError]) -> None:
    """Wait for the store to find damage in its database (a table whose checksums fail, read for a
    request, for sync or for consensus), then stop the node as SIGTERM does, with the error in `found`:
    `serve` raises it once every part has stopped, so that the node exits naming the folder, as it does
    for damage found at start. It has no copy to answer from, and a node whose database is damaged must
    be restored or synced afresh, which its operator has to know. (Raised inside the task group instead,
    it would cancel the other parts mid-step, which could leave the process half stopped.)"""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[StoreError] = loop.create_future()

    def note(error: StoreError) -> None:
        if not seen.done():
            seen.set_result(error)

    def damaged(error: StoreError) -> None:  # in whichever thread read the damaged table
        with contextlib.suppress(RuntimeError):  # the loop has closed: the node is stopping anyway
            loop.call_soon_threadsafe(note, error)

    svc.store.tell_damage_to(damaged)
    error = await seen
    log.error("event=database_damaged reason=%r", error.reason)
    found.append(error)
    stop.set()


_LISTEN_FAULTS = {
    errno.EADDRNOTAVAIL: "{host} is not an address of this machine",
    errno.EADDRINUSE: "another program listens on that port",
    errno.EACCES: "ports below 1024 need privileges",
    errno.EAFNOSUPPORT: "this machine does not support that kind of address (IPv6 turned off?)",
}


def listen_error(config: NodeConfig, exc: OSError) -> ConfigError:
    """A failure to listen where `[node] listen` says, in one line naming the setting and the address."""
    if isinstance(exc, socket.gaierror):
        why = f"the host {config.host!r} is not known (it resolves to no address)"
    elif exc.errno in _LISTEN_FAULTS:
        why = f"{os.strerror(exc.errno).lower()}: {_LISTEN_FAULTS[exc.errno].format(host=config.host)}"
    else:
        why = exc.strerror or str(exc)
    return ConfigError(f"cannot listen at [node] listen = {listen_text(config.host, config.port)!r} "
                       f"({config.data / CONFIG_FILE}): {why}")


def refuse_if_running(config: NodeConfig) -> None:
    """Refuse to start beside a node already running on this data folder. Its database lock (db/LOCK)
    says so too, unless that file was deleted while it ran; its pid file still names it then."""
    pid = node_running_on(config.data)
    if pid is not None:
        raise StoreError(f"cannot open the data folder {config.data}: another node runs on it (process {pid}, "
                         f"named in {config.pid_path}); stop it first")


def write_pid_file(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pid_file(path: Path) -> None:
    """Only if it is still ours (a node killed and restarted has written its own since)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text()) == os.getpid():
            path.unlink()


def tune_gc() -> None:
    """Fewer cyclic-garbage passes for a long-running node.

    A node under load allocates many short-lived, acyclic objects (decoded transactions, overlays,
    messages), which reference counting frees; with the default thresholds the collector still
    traverses the young generation every 700 allocations. What exists after start-up (modules, the
    loaded chain's caches) is moved out of the collector's sight for good.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def stop_signals() -> list[signal.Signals]:
    """The signals that stop the node cleanly: SIGINT, SIGTERM, and SIGHUP (the terminal it ran in closed)
    unless it was started to ignore SIGHUP (`nohup`), which it then goes on ignoring."""
    signals = [signal.SIGINT, signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)  # none on Windows
    if hangup is not None and signal.getsignal(hangup) != signal.SIG_IGN:
        signals.append(hangup)
    return signals


def run_node(config: NodeConfig, passphrase: str | None = None) -> None:
    """Run until one of `stop_signals()` arrives."""
    setup_logging()
    key = config.load_key(passphrase)
    tune_gc()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in stop_signals():
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(config, key, stop)

    asyncio.run(main())
