"""Block sync: a node that is behind fetches committed blocks with their certificates from its peers.

Who is behind: peers report their committed height in every envelope and reply (node/peers.py); peers
that stay quiet (or refuse us, not knowing our key) are asked GET /v1/status now and then. When the
best reported height is above ours (by two or more blocks at once, or by one for longer than a
moment, since consensus usually brings that one block itself), we fetch ranges:

    GET /peer/v1/blocks?from=A&to=B  ->  canonical msgpack [[block bytes, certificate bytes], ...]

at most `batch_blocks` blocks and about 8 MiB per answer (always at least one block). Nothing in an
answer is trusted: each block is checked as the next block of our chain (`validate_block`, which also
checks the parent's certificate) and its own certificate against the validators of its height before
`commit_block` makes it durable. The consensus driver's thread does the checking and committing, so
sync and consensus never write at the same time. A peer that serves something invalid or nothing is
set aside for a while and another is asked. Progress goes to the log: event=sync_progress.

This is all an observer does; a validator syncs when it was down, partitioned or simply slower.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import aiohttp
from aiohttp import web

from ler import codec
from ler.block import Block, CommitCertificate
from ler.errors import LerError
from node.client import json_or_none
from node.config import MAX_RANGE_BLOCKS
from node.peers import Network, PeerLink, read_response
from node.service import NodeService
from node.validator import ConsensusDriver, SyncRefused

log = logging.getLogger("ler.sync")

MAX_RANGE_BYTES = 8 * 1024 * 1024
MAX_ANSWER = codec.MAX_MESSAGE_BYTES * 2 + 1024 * 1024  # one largest block and its certificate, and more
PENALTY_S = 5.0     # how long a peer that failed us is skipped, doubled for each failure in a row ...
MAX_PENALTY_S = 60.0  # ... up to this: a peer claiming a height it cannot serve is asked once a minute
OTHER_CHAIN_WARNING_EVERY_S = 600.0
LAG_GRACE_S = 1.0   # one block behind for this long: fetch it rather than wait for consensus


def progress(first: int, height: int, target: int, seconds: float) -> str:
    """How far a catch-up from `first` is, for the log: height, target, share done of this catch-up, rate
    and the time left at that rate (eta_s=- until a block has come)."""
    done, todo = height - first, max(0, target - height)
    share = 100.0 if target <= first else min(100.0, max(0.0, 100.0 * done / (target - first)))
    rate = done / seconds if seconds > 0 else 0.0
    eta = f"{todo / rate:.0f}" if rate > 0 else "-"
    return f"height={height} target={target} done_pct={share:.1f} blocks_per_s={rate:.1f} eta_s={eta}"


class SyncError(Exception):
    pass


class Syncer:
    def __init__(self, svc: NodeService, driver: ConsensusDriver, network: Network) -> None:
        self.svc = svc
        self.store = svc.store
        self.driver = driver
        self.network = network
        self.settings = svc.config.sync
        self._poke = asyncio.Event()
        self._penalty: dict[str, float] = {}  # peer URL -> until when it is skipped
        self._failures: dict[str, int] = {}  # peer URL -> failed fetches in a row
        self._polls: dict[str, asyncio.Task[None]] = {}  # height polls in flight, by peer URL
        self._other_chain_warned: dict[str, float] = {}  # peer URL -> when we last said it is another chain's
        self._lag_since: float | None = None
        self.syncing = False
        self.target = 0
        network.on_height_seen.append(self._on_height)

    @property
    def lag(self) -> int:
        """How far the highest height any peer reported is above ours (0 when none is): what operators
        watch (ler_sync_lag_blocks, /health). Every peer counts here, one skipped for failing to serve
        included: while the peers ahead cannot give us their blocks (down, or a quorum gone with them) we
        are behind all the same, and a peer that claims a height it cannot serve is named by its
        sync_failed warnings. Only the catch-up itself (`_best_height`) passes skipped peers over."""
        heard = [link.height for link in list(self.network.links.values()) if link.height is not None]
        return max(0, max(heard, default=0) - self.store.height)

    def _best_height(self) -> int:
        """The highest height a peer claims, among peers not skipped for failing to serve what they
        claimed: a peer that lies about its height makes this node neither look nor keep trying to be
        behind."""
        return max(self.peer_heights(), default=0)

    def peer_heights(self) -> list[int]:
        """The heights those peers claim. (Also asked from the consensus thread, hence the copy.)"""
        now = time.monotonic()
        return [link.height for link in list(self.network.links.values())
                if link.height is not None and self._penalty.get(link.url, 0.0) <= now]

    def _fail(self, url: str) -> float:
        """Skip the peer for a while, longer for each failure in a row; returns for how long."""
        n = self._failures[url] = self._failures.get(url, 0) + 1
        wait = min(PENALTY_S * 2 ** min(n - 1, 16), MAX_PENALTY_S)
        self._penalty[url] = time.monotonic() + wait
        return wait

    def _other_chain(self, link: PeerLink, theirs: str, ours: str) -> None:
        """A peer of another chain is a misconfiguration the operator should hear of (every few minutes,
        not at every poll): this node learns nothing from it."""
        now = time.monotonic()
        if now < self._other_chain_warned.get(link.url, float("-inf")) + OTHER_CHAIN_WARNING_EVERY_S:
            return
        self._other_chain_warned[link.url] = now
        log.warning("event=peer_other_chain url=%s genesis=%.64s ours=%s reason=%r", link.url, theirs, ours,
                    "this peer serves a chain of another genesis document: it is never a source of blocks; "
                    "check its URL in [peers]")

    def _on_height(self, height: int) -> None:
        if height > self.store.height:
            self._poke.set()

    # --- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        poller = asyncio.create_task(self._poll_forever())
        try:
            while True:
                if self._due():
                    await self._catch_up()
                    continue
                self._poke.clear()
                try:
                    async with asyncio.timeout(self.settings.poll_s):  # not wait_for (see node.daemon.cancelled)
                        await self._poke.wait()
                except TimeoutError:
                    pass
        finally:
            poller.cancel()
            for task in list(self._polls.values()):
                task.cancel()

    async def _poll_forever(self) -> None:
        while True:
            self._poll_quiet_peers()
            await asyncio.sleep(self.settings.poll_s)

    def _due(self) -> bool:
        lag = max(0, self._best_height() - self.store.height)
        if lag <= 0:
            self._lag_since = None
            return False
        now = time.monotonic()
        if self._lag_since is None:
            self._lag_since = now
        # One block behind is normal for a moment in consensus: the block is on its way to us too.
        return lag >= 2 or not self.driver.voting or now - self._lag_since >= LAG_GRACE_S

    async def _catch_up(self) -> None:
        self.syncing = True
        began, first = time.monotonic(), self.store.height
        try:
            while True:
                target = self._best_height()
                self.target = target
                start = self.store.height + 1
                if start > target:
                    return
                link = self._source(start)
                if link is None:
                    await asyncio.sleep(0.2)
                    return
                end = min(target, start + self.settings.batch_blocks - 1, start + MAX_RANGE_BLOCKS - 1)
                try:
                    pairs = await self._fetch(link, start, end)
                    committed = await self.driver.submit_synced(pairs)
                except (SyncError, SyncRefused) as exc:
                    wait = self._fail(link.url)
                    log.warning("event=sync_failed peer=%s from=%d retry_in_s=%.0f reason=%r", link.url, start,
                                wait, str(exc))
                    continue
                log.info("event=sync_progress %s peer=%s blocks=%d",
                         progress(first, self.store.height, target, time.monotonic() - began), link.url, committed)
                if committed == 0 and self.store.height < start:
                    self._fail(link.url)
                else:
                    self._failures.pop(link.url, None)
        finally:
            self.syncing = False
            self._lag_since = None

    def _source(self, start: int) -> PeerLink | None:
        now = time.monotonic()
        candidates = [link for link in self.network.links.values()
                      if link.height is not None and link.height >= start
                      and self._penalty.get(link.url, 0.0) <= now]
        if not candidates:
            return None
        return max(candidates, key=lambda link: (link.connected, link.height or 0))

    async def _fetch(self, link: PeerLink, start: int, end: int) -> list[tuple[Block, CommitCertificate]]:
        session = self.network.session
        if session is None:
            raise SyncError("the node's HTTP client is not running")
        url = f"{link.url}/peer/v1/blocks?from={start}&to={end}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                if resp.status != 200:
                    text = await resp.text(errors="replace")
                    raise SyncError(f"HTTP {resp.status}: {text[:200]}")
                data = await read_response(resp, MAX_ANSWER)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise SyncError(f"{type(exc).__name__}: {exc}") from None
        return await self._decode(link, data, start, end)

    async def _decode(self, link: PeerLink, data: bytes, start: int, end: int) -> list[tuple[Block, CommitCertificate]]:
        """decode_range, with any fault it meets kept to this peer: logged with its traceback, then the
        answer is refused as malformed (the peer is passed over for a while). A peer's bytes, however
        strange, never stop the node."""
        try:
            return await asyncio.to_thread(decode_range, data, start, end)
        except SyncError:
            raise
        except Exception as exc:
            log.exception("event=sync_decode_error peer=%s", link.url)
            raise SyncError(f"an answer this node could not decode ({type(exc).__name__})") from None

    def _poll_quiet_peers(self) -> None:
        """Ask peers we have not heard from lately for their height (they may not know our key).

        Each poll runs on its own, so a peer that never answers delays neither the others' answers nor
        catching up from them; it is not asked again while its last poll is still waiting."""
        session = self.network.session
        if session is None:
            return
        stale = time.monotonic() - 3 * self.settings.poll_s
        for link in list(self.network.links.values()):
            if link.height_at >= stale or link.url in self._polls:
                continue
            self._polls[link.url] = asyncio.create_task(self._poll_one(session, link))

    async def _poll_one(self, session: aiohttp.ClientSession, link: PeerLink) -> None:
        try:
            await self._poll(session, link)
        finally:
            self._polls.pop(link.url, None)

    async def _poll(self, session: aiohttp.ClientSession, link: PeerLink) -> None:
        try:
            async with session.get(link.url + "/v1/status", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status != 200:
                    return
                status = json_or_none(await read_response(resp, 64 * 1024))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return
        ours = self.store.genesis_hash().hex()
        if not isinstance(status, dict) or status.get("genesis_hash") != ours:
            if isinstance(status, dict) and isinstance(status.get("genesis_hash"), str):
                self._other_chain(link, status["genesis_hash"], ours)
            return  # another chain's node: never a source
        height = status.get("height")
        if isinstance(height, int) and not isinstance(height, bool) and height >= 0:
            link.height = height
            link.height_at = time.monotonic()
            self._on_height(height)


def decode_range(data: bytes, start: int, end: int) -> list[tuple[Block, CommitCertificate]]:
    """Decode a blocks answer strictly: consecutive heights from `start`, none past `end`."""
    try:
        items = codec.decode(data, MAX_ANSWER)
    except LerError as exc:
        raise SyncError(f"malformed answer: {exc}") from None
    if not isinstance(items, list) or not items:
        raise SyncError("the answer is not a non-empty list of [block, certificate] pairs")
    pairs: list[tuple[Block, CommitCertificate]] = []
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
            raise SyncError(f"item {i} is not a [block, certificate] pair of byte strings")
        try:
            block, cert = Block.decode(item[0]), CommitCertificate.decode(item[1])
        except LerError as exc:
            raise SyncError(f"item {i}: {exc}") from None
        if block.header.height != start + i or block.header.height > end:
            raise SyncError(f"item {i} is block {block.header.height}, expected {start + i}")
        pairs.append((block, cert))
    return pairs


# --- serving blocks --------------------------------------------------------------------------------------

_INT = re.compile(r"[0-9]{1,18}")


def block_routes(svc: NodeService) -> list[web.RouteDef]:
    async def blocks(request: web.Request) -> web.Response:
        params = {}
        for name in ("from", "to"):
            text = request.query.get(name)
            if text is None or not _INT.fullmatch(text):
                return _refuse(400, f"query parameter {name} must be a height (a positive integer)")
            params[name] = int(text)
        start, end = params["from"], params["to"]
        height = svc.store.height
        if start < 1 or end < start:
            return _refuse(400, "expected 1 <= from <= to")
        if start > height:
            return _refuse(404, f"no block at height {start} (latest is {height})")
        end = min(end, height, start + MAX_RANGE_BLOCKS - 1)
        body = await asyncio.to_thread(_read_range, svc, start, end)
        return web.Response(body=body, content_type="application/msgpack")

    return [web.get("/peer/v1/blocks", blocks)]


def _read_range(svc: NodeService, start: int, end: int) -> bytes:
    out: list[Any] = []
    size = 0
    for h in range(start, end + 1):
        block, cert = svc.store.raw_block(h), svc.store.raw_cert(h)
        if block is None or cert is None:
            break
        if out and size + len(block) + len(cert) > MAX_RANGE_BYTES:
            break
        out.append([block, cert])
        size += len(block) + len(cert)
    return codec.encode(out)


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
