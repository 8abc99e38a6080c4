"""The node's HTTP listener: what it bounds beyond a request's size, namely connections and time.

A client that opens connections and sends nothing, or sends its request a byte at a time, holds one of
the node's file descriptors for as long as it keeps the connection. Unbounded, enough of them leave the
node none to accept its peers' messages with or to open its database files, and asyncio logs a traceback
for every accept that fails, several thousand a second, until the disk is full. So:
- at most `[limits] max_connections` at once: past that, a new connection is closed as soon as it is
  accepted, and one WARNING a minute at most says how many were (`event=connections_refused`);
- if `[limits] max_connections_per_address` is set, at most that many from one remote address: past
  that, its new connections are closed as soon as its address is known (`event=connections_refused`
  with `per_address=`), so one client cannot take every connection from the rest. (Off by default: behind
  a reverse proxy every client has the proxy's address.)
- a connection that has not sent a whole request head `idle_timeout_s` after it opened, or after its
  last answer, is closed (aiohttp's keep-alive timer, which also runs before a connection's first
  request);
- a request body must have arrived `body_timeout_s` after its head (408, and the connection is closed
  after at most `LINGER_S` more);
- at start the process's open-file limit is raised to its hard limit, and the connection cap lowered
  (with a WARNING) when that limit leaves too little room for the database's files and the peers;
- an accept that fails anyway (descriptors used up by something else) is logged as one line a minute.

A peer keeps its connection busy (it says hello every `[gossip] resend_s`), so the idle timeout never
closes one between two of its messages; were it closed, the next message would open another.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

log = logging.getLogger("ler.node")

#: File descriptors kept out of the connection cap's reach: LevelDB's table files (its default
#: max_open_files) and logs, some for everything else the process opens, and one burst of accepted
#: connections past the cap (asyncio accepts up to the listen backlog, 128, before any is closed).
FD_RESERVE = 1000 + 64 + 128
#: Descriptors kept per peer on top (its outgoing connections).
FD_PER_PEER = 8
#: The fewest connections a low open-file limit lowers the cap to.
MIN_CONNECTIONS = 16
#: Connections a peer may hold to this node at once, and the fewest the cap should leave to clients
#: beside them (below that, a WARNING at start).
PEER_CONNECTIONS = 2
MIN_CLIENT_CONNECTIONS = 4
#: How long the node goes on reading (and dropping) a body it answered before it arrived (a 413 or a
#: 408), so that the client gets the answer rather than a reset; then the connection is closed.
LINGER_S = 2.0
#: The longest request line (method, URL and version) and the longest header the node reads: past them
#: a request is refused with 414 and 431. They differ, so that the parser's refusal (which names only
#: the limit it hit) tells which was too long.
MAX_REQUEST_LINE = 16384
MAX_HEADER = 8190
#: Whatever the refusals, at most one WARNING line per this many seconds says so.
WARN_EVERY_S = 60.0
BODY_TIMEOUT_KEY: web.AppKey[float] = web.AppKey("body_timeout_s", float)


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # not allowed here: the cap below adapts to the limit as it is
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def connection_cap(wanted: int, fd_limit: int, peers: int) -> int:
    """The most connections to accept: `wanted`, lowered to fit in `fd_limit` beside the reserve (but
    never below `MIN_CONNECTIONS` on that account)."""
    room = fd_limit - FD_RESERVE - FD_PER_PEER * peers
    return min(wanted, max(MIN_CONNECTIONS, room))


def fewest_connections(peers: int) -> int:
    """The fewest connections a node with `peers` peers should allow (fewer: a WARNING at start). Each
    peer may hold two to this node (a message and a height poll overlapping), and clients need some."""
    return PEER_CONNECTIONS * peers + MIN_CLIENT_CONNECTIONS if peers else 1


#: Remote addresses kept track of before those that hold no connection are forgotten.
ADDRESSES_KEPT = 4096


class _Refused(asyncio.Protocol):
    """A connection past the cap: closed at once (a reset, so no descriptor lingers in TIME_WAIT)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class RateLimitedWarning:
    """Counts events and logs at most one WARNING per `WARN_EVERY_S` with the count since the last."""

    __slots__ = ("_count", "_last", "detail", "event", "total")

    def __init__(self, event: str, detail: str) -> None:
        self.event, self.detail = event, detail
        self._last = -WARN_EVERY_S
        self._count = 0
        self.total = 0

    def hit(self, **fields: Any) -> None:
        self._count += 1
        self.total += 1
        now = time.monotonic()
        if now - self._last >= WARN_EVERY_S:
            extra = "".join(f" {k}={v}" for k, v in fields.items())
            log.warning("event=%s count=%d%s reason=%r", self.event, self._count, extra, self.detail)
            self._last, self._count = now, 0


class _JsonErrors(RequestHandler):
    """aiohttp's handler of one connection, whose own answer to what it cannot parse as HTTP (a malformed
    request line or header, a body framed wrongly) is JSON `{"error": reason}` as every other refusal of
    the node is, rather than aiohttp's text/plain, and a request line or a header too long for it is a
    414 or a 431, not a 400. Only that answer differs; it still closes the connection, and aiohttp still
    logs it (rate-limited: node.daemon.MalformedHttpFilter)."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)
        if not isinstance(plain, web.Response) or plain.content_type != "text/plain":
            return plain
        too_long = exc.args[1] if isinstance(exc, LineTooLong) and len(exc.args) > 1 else None
        if status >= 500:
            reason = "the node could not handle the request (see its log)"
        elif too_long is not None and too_long == self.max_line_size:
            status, reason = 414, f"the request line (its URL) is longer than {too_long} bytes"
        elif too_long is not None and too_long == self.max_field_size:
            status, reason = 431, f"a header is longer than {too_long} bytes"
        else:
            reason = " ".join(str(getattr(exc, "message", None) or message or plain.text or "").split())
            reason = f"not a request this node can read: {reason[:300] or f'HTTP {status}'}"
        answer = web.json_response({"error": reason}, status=status)
        answer.force_close()
        return answer


def _json_errors(handler: RequestHandler) -> RequestHandler:
    handler.__class__ = _JsonErrors  # the same object and layout, with `handle_error` above
    return handler


class _ByAddress(asyncio.Protocol):
    """A connection's protocol until its remote address is known, which is when it is made: past that
    address's share of connections it is closed, otherwise the request handler `inner` takes over."""

    __slots__ = ("inner", "site")

    def __init__(self, site: CappedSite, inner: asyncio.Protocol) -> None:
        self.site, self.inner = site, inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.site.admit(transport):
            transport.set_protocol(self.inner)
            self.inner.connection_made(transport)
        else:
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # only a connection refused above ends here: the others have their handler by then


class CappedSite(web.TCPSite):
    """A TCPSite that accepts at most `cap` connections at once, and at most `per_address` (if more than
    0) from one remote address."""

    __slots__ = ("_by_address", "address_refusals", "cap", "per_address", "refusals")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: int, per_address: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.cap = cap
        self.per_address = per_address
        self.refusals = RateLimitedWarning(
            "connections_refused", "the node holds its most connections ([limits] max_connections); "
            "new ones are closed until some end")
        self.address_refusals = RateLimitedWarning(
            "connections_refused", "one address holds its most connections ([limits] "
            "max_connections_per_address); its new ones are closed until some end")
        self._by_address: dict[str, set[asyncio.BaseTransport]] = {}

    @property
    def refused(self) -> int:
        """Connections closed on arrival so far, for either bound."""
        return self.refusals.total + self.address_refusals.total

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether the connection's address may hold one more (it is then counted until it closes)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        live = self._by_address.get(address)
        if live is None:
            if len(self._by_address) >= ADDRESSES_KEPT:
                self._by_address = {a: ts for a, ts in self._by_address.items()
                                    if any(not t.is_closing() for t in ts)}
            live = self._by_address[address] = set()
        else:
            live.difference_update([t for t in live if t.is_closing()])
        if len(live) >= self.per_address:
            self.address_refusals.hit(per_address=self.per_address, address=address)
            return False
        live.add(transport)
        return True

    @property
    def open_connections(self) -> int:
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    async def start(self) -> None:
        # TCPSite.start, with the runner's protocol factory behind the cap.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._factory(server), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)

    def _factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        cap = self.cap
        # A connection counts in server.connections from its protocol's connection_made, which the loop
        # runs a turn after making the protocol; a burst of accepts makes many protocols in one turn.
        # Those made and not yet counted there are counted here, until two turns later.
        starting = 0

        def started() -> None:
            nonlocal starting
            starting -= 1

        def make() -> asyncio.Protocol:
            nonlocal starting
            if len(server.connections) + starting >= cap:
                self.refusals.hit(limit=cap)
                return _Refused()
            starting += 1
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, started)
            handler = _json_errors(server())
            return _ByAddress(self, handler) if self.per_address > 0 else handler

        return make


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> RateLimitedWarning:
    """Make a failing accept one WARNING line a minute instead of a traceback per attempt."""
    failures = RateLimitedWarning("accept_failed", "the process has no file descriptor left for a new "
                                                    "connection; raise its open-file limit")
    fallback = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            failures.hit(error=type(context.get("exception")).__name__)
            return
        if fallback is not None:
            fallback(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return failures


#: How often the answer watch looks at the connections, in seconds.
WATCH_EVERY_S = 1.0
#: Unsent bytes a connection must have held, when last looked at, for its end to call for a collection.
COLLECT_BYTES = 1 << 20
#: The fewest seconds between two collections the answer watch runs.
COLLECT_EVERY_S = 5.0


class AnswerWatch:
    """What answers cost while they wait to be taken, and once they are given up.

    An answer goes into its connection's buffer in memory and leaves it as fast as the client takes it.
    - A connection whose unsent bytes have not gone down for `timeout` seconds is closed, so that a client
      that asks for a large answer (a range of blocks is up to 8 MiB) and never reads it holds neither the
      answer nor a connection for good (`event=stalled_readers_closed`, one WARNING a minute at most).
    - aiohttp leaves an answer cut off by the end of its connection (the client left, or was closed above)
      in a reference cycle: the lost connection's exception holds the frames that were writing it. Only
      Python's cyclic collector frees those, and a node runs it rarely (`node.daemon.tune_gc`), so answers
      given up one after another would pile up. When a connection that held `COLLECT_BYTES` or more
      unsent has ended, the watch runs a collection at its next look (at most one per `COLLECT_EVERY_S`).
    """

    __slots__ = ("_last_collect", "_owed", "_server_of", "_watched", "collections", "stalled", "timeout")

    def __init__(self, server_of: Callable[[], web.Server | None], timeout: float) -> None:
        self._server_of = server_of
        self.timeout = timeout
        # transport -> (its unsent bytes when last looked at, when they last went down)
        self._watched: dict[asyncio.BaseTransport, tuple[int, float]] = {}
        self._last_collect = -COLLECT_EVERY_S
        self._owed = False
        self.stalled = RateLimitedWarning(
            "stalled_readers_closed", "a client took none of its answer for [limits] body_timeout_s; its "
                                      "connection was closed")
        self.collections = 0

    @property
    def waiting(self) -> int:
        """Connections with unsent bytes at the last look."""
        return len(self._watched)

    def look(self, now: float) -> None:
        """One look at every connection (`now` is time.monotonic())."""
        if self._owed and now - self._last_collect >= COLLECT_EVERY_S:
            gc.collect()
            self._last_collect, self._owed = now, False
            self.collections += 1
        server = self._server_of()
        watched: dict[asyncio.BaseTransport, tuple[int, float]] = {}
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is None or transport.is_closing():
                continue
            unsent = transport.get_write_buffer_size()
            if not unsent:
                continue
            before = self._watched.get(transport)
            since = now if before is None or unsent < before[0] else before[1]
            if now - since >= self.timeout:
                transport.abort()
                self.stalled.hit(unsent_bytes=unsent)
                continue  # and counted below as a connection that ended
            watched[transport] = (unsent, since)
        if any(unsent >= COLLECT_BYTES for t, (unsent, _) in self._watched.items() if t not in watched):
            self._owed = True
        self._watched = watched

    async def run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            self.look(time.monotonic())


class UnreadableBody(Exception):
    """A request body that cannot be read whole: the client went away in the middle of it, or its
    Content-Encoding does not decode. The client's doing, not the node's: answered with 400 (if anyone is
    still there) and the connection closed, since nothing after such a body can be read."""


@contextlib.asynccontextmanager
async def reading_body(request: web.Request) -> AsyncIterator[None]:
    """Around the reading of a request's body: past the app's body timeout, a 408 (which closes the
    connection, since the rest of the body may still be on its way); a body that cannot be read whole,
    `UnreadableBody`."""
    timeout = request.app.get(BODY_TIMEOUT_KEY)
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {timeout:g} s") from None
    except ConnectionError:
        raise UnreadableBody("the connection was lost before the request body arrived") from None
    except RequestPayloadError as exc:
        cause = exc.__cause__ or exc
        reason = " ".join(str(getattr(cause, "message", None) or cause).split())[:200]
        raise UnreadableBody(f"the request body could not be read: {reason}") from None


def expect_within(limit: int | None = None) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """An `expect_handler` for a route: a client that asks before sending its body (Expect: 100-continue)
    and declares one larger than `limit` (the app's client_max_size by default) gets the 413 at once,
    rather than an invitation to send what would then be refused."""

    async def handler(request: web.Request) -> web.StreamResponse | None:
        expect = request.headers.get("Expect", "").lower()
        if request.version != HttpVersion11:
            return None  # an HTTP/1.0 client does not wait for a 100
        if expect != "100-continue":
            return web.json_response({"error": f"unknown Expect: {expect[:100]}"}, status=417)
        cap = request.client_max_size if limit is None else limit
        declared = request.content_length
        if declared is not None and declared > cap:
            resp = web.json_response({"error": f"request body too large (limit {cap} bytes)"}, status=413)
            resp.force_close()  # the client sends no body, or one that must not be read as a request
            return resp
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # what was written so far is no part of the answer
        return None

    return handler


async def read_body(request: web.Request) -> bytes:
    """The request's whole body (at most the app's client_max_size), read under `reading_body`. A body
    that says it is larger is refused before any of it is read."""
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=declared)
    async with reading_body(request):
        return await request.read()
