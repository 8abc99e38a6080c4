"""The node's HTTP listener against clients that hold connections: too many at once, silent ones, a
request head or body sent and never finished. A real `ler node run` process with small limits, raw
sockets from this test: the node must keep its descriptors bounded, close what idles, answer a stalled
body with 408, log one line where there were thousands of events, and serve again once they are gone."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from node_proc import NodeProc, free_port, init_node, make_chain, wait_until

from node import listener

CAP = 20
IDLE_S = 1.0
BODY_S = 1.0


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(port: int, first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        s.sendall(first)
    return s


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """Whether the node closes `s` (end of stream or a reset) within `timeout` seconds."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _answer(s: socket.socket, timeout: float = 10.0) -> tuple[int, bytes, float, float]:
    """The status and body of an HTTP answer the node then closes, and the seconds until the answer
    began and until the connection was closed."""
    s.settimeout(timeout)
    started = time.monotonic()
    data = b""
    first = None
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        first = first or time.monotonic() - started
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, first or 0.0, time.monotonic() - started


def _one_answer(s: socket.socket, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """The head and body of the first whole answer on `s` (by its Content-Length), without waiting for
    the node to close the connection."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole answer head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    declared = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert declared is not None, f"an answer without a Content-Length: {head!r}"
    length = int(declared[1])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole answer body: {body!r}"
        body += chunk
    return head, body[:length]


def _serves(proc: NodeProc) -> bool:
    try:
        return proc.get("/v1/status").status == 200
    except OSError:  # still refused: closed on arrival
        return False


def _metric(proc: NodeProc, name: str) -> int:
    text = proc.get("/metrics").body.decode()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    chain = make_chain(tmp_path, chain_id="listener-test")
    data = init_node(chain, tmp_path / "node", limits={"max_connections": CAP, "idle_timeout_s": IDLE_S,
                                                        "body_timeout_s": BODY_S})
    proc = NodeProc(data).start()
    yield proc
    proc.close()


def test_connections_past_the_cap_are_closed_and_idle_ones_end(node: NodeProc) -> None:
    port = _port(node.url)
    fds_before = _open_fds(node.pid)
    held = [_connect(port) for _ in range(CAP)]
    # The node accepts connections in the order they came (the kernel's queue is first in, first out):
    # it takes the held ones, and then holds CAP, so every further one is closed at once. (Counting its
    # descriptors to see it hold them raced with the closing of the connection that saw it up.)
    extra = [_connect(port) for _ in range(3 * CAP)]
    assert all(_closed_by_peer(s, 2.0) for s in extra)
    assert _open_fds(node.pid) <= fds_before + CAP + 2
    # The held ones sent nothing: closed after the idle timeout, not kept for aiohttp's default hour.
    started = time.monotonic()
    assert all(_closed_by_peer(s, IDLE_S + 5) for s in held)
    assert time.monotonic() - started < IDLE_S + 5
    for s in held + extra:
        s.close()
    # Served again; the metrics and the log say what happened, in one line.
    wait_until(lambda: _serves(node), 10, "the node to answer again")
    refused = _metric(node, "ler_http_connections_refused_total")
    assert refused >= 3 * CAP
    log = node.log(None)
    assert log.count("event=connections_refused") == 1, log
    assert "Traceback" not in log


def _connect_from(address: str, port: int) -> socket.socket:
    """A connection to the node from another loopback address (all of 127/8 is this machine)."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))


def _status_over(s: socket.socket, path: str = "/health") -> int | None:
    """The status of a GET sent over `s`, or None if the node closed it instead of answering."""
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
        s.settimeout(5)
        head = s.recv(65536)
    except OSError:
        return None
    return int(head.split(b" ", 2)[1]) if head else None


def test_one_address_holds_at_most_its_share_and_the_others_are_served(tmp_path: Path) -> None:
    chain = make_chain(tmp_path, chain_id="per-address-test")
    data = init_node(chain, tmp_path / "node", limits={"max_connections": 64, "max_connections_per_address": 4})
    proc = NodeProc(data).start()
    try:
        port = _port(proc.url)
        held = [_connect_from("127.0.0.3", port) for _ in range(4)]
        extra = [_connect_from("127.0.0.3", port) for _ in range(6)]
        assert all(_closed_by_peer(s, 2.0) for s in extra)
        assert [_status_over(s) for s in held] == [200] * 4  # its first four are served as ever
        assert _status_over(_connect_from("127.0.0.4", port)) == 200  # another address meanwhile
        assert _serves(proc)
        for s in held + extra:
            s.close()
        # Its connections closed, the address is served again.
        wait_until(lambda: _status_over(_connect_from("127.0.0.3", port)) == 200, 10, "the address to be served")
        assert _metric(proc, "ler_http_connections_refused_total") >= 6
        said = [line for line in proc.log(None).splitlines() if "event=connections_refused" in line]
        assert len(said) == 1 and "per_address=4 address=127.0.0.3" in said[0], said
    finally:
        proc.close()


class _FakeTransport(asyncio.BaseTransport):
    def __init__(self, address: str) -> None:
        super().__init__()
        self.address, self.closed = address, False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.address, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed


async def test_the_count_by_address_forgets_addresses_that_hold_nothing() -> None:
    from aiohttp import web

    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        site = listener.CappedSite(runner, "127.0.0.1", 0, 100, per_address=2)
        a = [_FakeTransport("10.0.0.1") for _ in range(3)]
        assert [site.admit(t) for t in a] == [True, True, False]
        a[0].closed = True
        assert site.admit(a[2])  # one of its two closed: room again
        many = [_FakeTransport(f"10.1.{i // 256}.{i % 256}") for i in range(listener.ADDRESSES_KEPT)]
        assert all(site.admit(t) for t in many)
        for t in many:
            t.closed = True
        assert site.admit(_FakeTransport("10.2.0.1"))  # the table was full: those holding nothing go
        assert set(site._by_address) == {"10.0.0.1", "10.2.0.1"}
    finally:
        await runner.cleanup()


def test_an_unfinished_request_head_is_closed(node: NodeProc) -> None:
    s = _connect(_port(node.url), b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    started = time.monotonic()
    assert _closed_by_peer(s, IDLE_S + 5)
    assert time.monotonic() - started >= IDLE_S * 0.5
    s.close()
    assert node.get("/v1/status").status == 200


@pytest.mark.parametrize("path", ["/v1/txs", "/v1/verify", "/peer/v1/gossip"])
def test_a_body_that_stops_coming_gets_408_and_the_connection_closed(node: NodeProc, path: str) -> None:
    s = _connect(_port(node.url), f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: 1000\r\n\r\n{{\"txs\": ".encode())
    status, body, answered, closed = _answer(s)
    s.close()
    assert status == 408, body
    assert "did not arrive within" in json.loads(body)["error"]
    assert BODY_S * 0.5 <= answered < BODY_S + 5
    assert closed < answered + listener.LINGER_S + 3  # not left open for the rest of the body
    assert node.get("/v1/status").status == 200


def test_a_low_open_file_limit_lowers_the_cap(tmp_path: Path) -> None:
    """Under `ulimit -n 600` the node keeps room for its database and peers: it says so at start and
    takes no more connections than fit, so a flood of more than the limit never makes an accept fail."""
    chain = make_chain(tmp_path, chain_id="listener-test")
    data = init_node(chain, tmp_path / "node", limits={"idle_timeout_s": IDLE_S})
    expected = listener.connection_cap(1024, 600, 0)
    assert expected < 1024
    command = ["bash", "-c", f'ulimit -n 600 && exec "{sys.executable}" -m node.cli node run --data "{data}"']
    proc = NodeProc(data, command=command).start()
    try:
        assert f"event=max_connections_lowered max_connections={expected} open_file_limit=600" in proc.log(None)
        port = _port(proc.url)
        socks = [_connect(port) for _ in range(700)]
        wait_until(lambda: "event=connections_refused" in proc.log(None), 10, "refusals past the cap")
        assert _open_fds(proc.pid) < 600
        for s in socks:
            s.close()
        wait_until(lambda: _serves(proc), 15, "the node to answer again")
        # An operator sees the limit and how close the node came to it.
        assert _metric(proc, "process_max_fds") == 600
        assert abs(_metric(proc, "process_open_fds") - _open_fds(proc.pid)) <= 3
        assert "accept_failed" not in proc.log(None) and "Traceback" not in proc.log(None)
    finally:
        proc.close()


def test_connection_cap_keeps_room_for_the_database_and_peers() -> None:
    assert listener.connection_cap(1024, 1_000_000, 3) == 1024
    assert listener.connection_cap(1024, 2000, 4) == 2000 - listener.FD_RESERVE - 4 * listener.FD_PER_PEER
    assert listener.connection_cap(1024, 1024, 0) == listener.MIN_CONNECTIONS
    assert listener.connection_cap(5, 1_000_000, 0) == 5  # a cap set low stays as set
    assert listener.connection_cap(5, 1024, 0) == 5
    soft_before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert listener.raise_fd_limit() >= soft_before


def test_failed_accepts_are_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        failures = listener.quiet_accept_errors(loop)
        for _ in range(1000):
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(24, "Too many open files")})
        assert failures.total == 1000
        loop.call_exception_handler({"message": "something else entirely"})

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert sum("event=accept_failed" in m for m in lines) == 1
    assert any("error=OSError" in m for m in lines)
    assert any("something else entirely" in m for m in lines)  # other errors still reach the default


@pytest.mark.parametrize(("cap", "per_address", "warned"), [(5, 0, True), (10, 0, False), (10, 1, True),
                                                          (10, 2, False)])
def test_a_cap_too_low_for_the_peers_is_named_at_start(tmp_path: Path, cap: int, per_address: int,
                                                       warned: bool) -> None:
    """Three peers may hold six connections, two each: a cap of 5, or 1 per address, leaves clients and
    peers refusing each other, and the node says so when it starts; a cap of 10, 2 per address, is enough."""
    assert listener.fewest_connections(3) == 10 and listener.fewest_connections(0) == 1
    chain = make_chain(tmp_path, chain_id="listener-test")
    data = init_node(chain, tmp_path / "node", limits={"max_connections": cap,
                                                        "max_connections_per_address": per_address})
    config = data / "config.toml"
    peers = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]  # nothing listens there: never reached
    text = config.read_text()
    assert "urls = []" in text
    config.write_text(text.replace("urls = []", f"urls = {peers!r}".replace("'", '"'), 1))
    proc = NodeProc(data).start()
    try:
        line = (f"event=max_connections_per_address_low max_connections_per_address={per_address}" if per_address
                else f"event=max_connections_low max_connections={cap} peers=3")
        assert (line in proc.log(None)) is warned, proc.log()
        assert "_low" not in proc.log(None) or warned, proc.log()
        assert _serves(proc)
    finally:
        proc.close()


def test_a_body_cut_short_or_undecodable_is_the_clients_fault_and_a_huge_one_is_refused_at_once(
        node: NodeProc) -> None:
    port = _port(node.url)
    for path in ("/v1/txs", "/v1/verify", "/peer/v1/gossip"):
        # The client leaves in the middle of its body.
        s = _connect(port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Content-Length: 100\r\n\r\n{{".encode())
        time.sleep(0.2)
        s.close()
        # A gzip body that is not gzip: a 400 with the reason, and the connection closed.
        s = _connect(port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd".encode())
        status, body, _, _ = _answer(s)
        s.close()
        assert status == 400, body
        assert "could not be read" in json.loads(body)["error"], body
    # A body that says it is larger than the node takes is refused before any of it is sent.
    s = _connect(port, b"POST /v1/txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 999999999\r\n\r\n")
    status, body, answered, _ = _answer(s)
    s.close()
    assert status == 413 and "too large" in json.loads(body)["error"], body
    assert answered < BODY_S * 0.5  # not after waiting for the body
    assert node.get("/v1/status").status == 200
    log = node.log(None)
    assert "Traceback" not in log and "internal_error" not in log and "ERROR" not in log, log[-3000:]


def test_a_client_that_asks_before_sending_a_body_too_large_gets_the_413_not_an_invitation(node: NodeProc) -> None:
    """Expect: 100-continue is for learning before sending that a body will be refused: a body declared
    over the limit gets 413 (JSON, connection closed) and no 100 first; one within it gets the 100, and
    its answer; an Expect the node does not know is 417, in JSON."""
    port = _port(node.url)
    for path in ("/v1/txs", "/v1/bundles", "/peer/v1/gossip"):
        s = _connect(port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"Expect: 100-continue\r\nContent-Length: 999999999\r\n\r\n".encode())
        head, body = _one_answer(s)
        s.close()
        assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower(), (path, head)
        assert "too large" in json.loads(body)["error"], (path, body)
    s = _connect(port, b"POST /v1/txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    s.settimeout(5)
    assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"{}")
    head = s.recv(65536)
    s.close()
    assert head.startswith(b"HTTP/1.1 400 "), head  # read and answered: an object without txs
    s = _connect(port, b"POST /v1/txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Expect: 102-maybe\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    status, body, _, _ = _answer(s)
    s.close()
    assert status == 417 and "Expect" in json.loads(body)["error"], body
    assert node.get("/v1/status").status == 200


class _Answer(bytes):
    """An answer body the collector tracks (it has a __dict__), so a test can see whether one is alive."""


def _answers_alive() -> int:
    return sum(type(o) is _Answer for o in gc.get_objects())


@pytest.mark.parametrize("client_leaves", [True, False])
async def test_an_answer_nobody_takes_is_let_go(client_leaves: bool) -> None:
    """A client asks for a large answer and reads none of it. If it leaves, the answer (which aiohttp
    leaves in a reference cycle) is freed at once, not at the collector's next full pass; if it stays,
    its connection is closed once it has taken nothing for the timeout, and the answer freed as well."""
    from aiohttp import web

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=_Answer(bytes(32 << 20)))

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    watch = listener.AnswerWatch(lambda: runner.server, timeout=60.0 if client_leaves else 1.0)
    watching = asyncio.create_task(watch.run())
    gc.collect()
    gc.disable()  # as rare as a node's full passes (node.daemon.tune_gc): only the watch collects
    loop = asyncio.get_running_loop()
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        await loop.sock_sendall(client, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")

        async def until(what: Callable[[], bool], seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while not what():
                assert time.monotonic() < deadline, "timed out"
                await asyncio.sleep(0.05)

        server = runner.server
        assert server is not None
        await until(lambda: any(h.transport is not None and h.transport.get_write_buffer_size() > 0
                                for h in server.connections), 10)
        assert _answers_alive() == 1
        await until(lambda: watch.waiting == 1, 10)  # the watch has seen it waiting
        if client_leaves:
            client.close()
        await until(lambda: not server.connections, 20)
        assert watch.stalled.total == (0 if client_leaves else 1)
        await until(lambda: watch.collections >= 1, 10)
        assert _answers_alive() == 0
    finally:
        gc.enable()
        client.close()
        watching.cancel()
        await runner.cleanup()


async def test_stopping_cancels_again_a_task_that_let_a_cancellation_go() -> None:
    """A task that goes on after one cancellation (as one waiting in `asyncio.wait_for` can on Python
    3.11, when the cancellation lands just as its timeout fires) is cancelled again, so that the node's
    stop ends instead of waiting for it for ever."""
    from node.daemon import cancelled

    cancellations = 0

    async def stubborn() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations == 2:
                    raise  # the first is lost, as described above

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancelled([task], again_after_s=0.05), 5)
    assert task.cancelled() and cancellations == 2
