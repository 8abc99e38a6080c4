"""Real network partitions: 4 authorities, each in a network namespace of its own with its own address,
joined by a bridge; a node is cut off by taking its link down (its packets vanish: no reset, no refusal,
exactly what a failed switch or cable does), and healed by bringing it up again.

What the network must do: three of four keep committing while one is cut off, and the one cut off
catches up once healed, including what its own clients gave it meanwhile; two cut off stop every
commit without a fork, while transactions wait on both sides, and the network resumes when they return.

Network namespaces need root (CI runs as root); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from node_proc import LER, Reply, wait_until
from test_network import Net, Node, short_timeouts

from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer
from ler.keys import KeyPair, write_key_file
from node.config import init_data_dir

pytestmark = pytest.mark.slow

PORT = 8700
RTYPE = "degree"


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr.strip()}"


def _namespaces_work() -> str | None:
    """None if this process can make network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"lerprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"cannot make a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


# One request, made from inside a node's namespace (the test's own way to a node it has cut off).
_CLIENT = """
import http.client, sys
url, method, path, ctype, timeout = sys.argv[1:6]
host, _, port = url.removeprefix("http://").partition(":")
conn = http.client.HTTPConnection(host, int(port), timeout=float(timeout))
body = sys.stdin.buffer.read() or None
conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
r = conn.getresponse()
sys.stdout.buffer.write(str(r.status).encode() + b"\\n" + r.read())
"""


def _free_subnet() -> str:
    """A /24 of 198.18.0.0/15 (kept for benchmarking networks, RFC 2544) that this machine does not route
    yet: the bridge's address adds a route for it, which must not shadow a network the machine uses."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, timeout=30).stdout
    for n in range(os.getpid() % 256, os.getpid() % 256 + 512):
        subnet = f"198.{18 + n // 256 % 2}.{n % 256}"
        if f"{subnet}." not in routes:
            return subnet
    pytest.skip("no free /24 in 198.18.0.0/15 for the test network")


@dataclass
class NsNode(Node):
    """A node whose process runs in network namespace `ns`, reached through the bridge at `link`."""

    ns: str = ""
    link: str = ""  # the bridge side of its veth pair: down is a cut cable
    is_cut: bool = False

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 30.0) -> Reply:
        if not self.is_cut:
            return super().request(method, path, body, content_type, timeout)
        # The bridge no longer reaches it: ask from inside its namespace, as a client on its side would.
        r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", _CLIENT, self.url, method,
                            path, content_type or "", str(timeout)], input=body or b"", capture_output=True,
                           timeout=timeout + 30)
        if r.returncode != 0:
            raise OSError(f"{self.name} did not answer: {r.stderr.decode(errors='replace')[-300:]}")
        status, _, payload = r.stdout.partition(b"\n")
        return Reply(int(status), "application/json", payload)

    def start(self) -> None:
        assert not self.alive()
        with open(self.data / "node.log", "ab") as log:
            # `ip netns exec` enters the namespace and execs the command: the pid is the node's.
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, str(LER), "node", "run", "--data",
                                          str(self.data)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid = self.proc.pid
        wait_until(lambda: self.try_get("/health"), 30, f"{self.name} to answer")

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")
        self.is_cut = True

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")
        self.is_cut = False


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    why = _namespaces_work()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("partition")
    tag = f"{os.getpid() % 100000}"
    subnet = _free_subnet()
    bridge = f"lpb{tag}"
    keys = [KeyPair.generate() for _ in range(4)]
    issuer = KeyPair.generate()
    genesis = Genesis(GENESIS_FORMAT, "partition-test", int(time.time() * 1000),
                      tuple(GenesisAuthority(k.did, f"Authority {i + 1}") for i, k in enumerate(keys)),
                      (GenesisIssuer(issuer.did, "University", (RTYPE,)),))
    genesis.save(root / "genesis.json")
    urls = [f"http://{subnet}.{i + 1}:{PORT}" for i in range(4)]
    nodes: list[NsNode] = []
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append("bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, key in enumerate(keys):
            ns, link = f"lpn{tag}{i}", f"lpv{tag}{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", link, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{subnet}.{i + 1}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            write_key_file(root / f"authority{i + 1}.key", key)
            data = root / f"authority{i + 1}"
            init_data_dir(data, root / "genesis.json", root / f"authority{i + 1}.key", f"{subnet}.{i + 1}:{PORT}",
                          peers=tuple(u for j, u in enumerate(urls) if j != i))
            short_timeouts(data)
            nodes.append(NsNode(f"authority{i + 1}", urls[i], "authority", data, root / f"authority{i + 1}.key",
                                None, ns=ns, link=link))
        for node in nodes:
            node.start()
        yield Net(root, genesis.chain_id, list(nodes), issuer, RTYPE)
    finally:
        for node in nodes:
            if node.alive():
                node.kill()
        for name in made:
            if name == "bridge":
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
            else:
                # The pair goes at once with its bridge end (the kernel drops a namespace's own links
                # only some seconds after the namespace is gone), then the namespace.
                subprocess.run(["ip", "link", "del", f"lpv{name.removeprefix('lpn')}"], capture_output=True,
                               timeout=30)
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def nodes_of(net: Net) -> list[NsNode]:
    return [n for n in net.nodes if isinstance(n, NsNode)]


def test_the_network_runs_across_namespaces(net: Net) -> None:
    txs = net.anchors(4)
    net.nodes[0].submit(txs)
    net.wait_committed(txs, net.nodes)
    net.assert_agree(net.nodes)


def test_three_of_four_commit_while_one_is_cut_off_and_it_catches_up_when_healed(net: Net) -> None:
    a = nodes_of(net)
    cut, rest = a[3], a[:3]
    stuck = cut.height()
    cut.cut()
    try:
        for _ in range(3):  # several heights: one has the cut-off node as its round-0 proposer
            txs = net.anchors(5)
            rest[0].submit(txs)
            net.wait_committed(txs, rest)
        # What a client gave the cut-off node meanwhile: accepted, and kept until the network is back.
        mine = net.anchors(3)
        assert {r["status"] for r in cut.submit(mine)} == {"pending"}
        time.sleep(2)  # rounds of its own, alone: it must not commit anything
        assert cut.height() == stuck
        assert all(n.tx_status(tx) is None for n in rest for tx in mine)  # 404: never reached them
    finally:
        cut.heal()
    net.wait_committed(mine, a)  # gossip retried until the peers answered again
    net.wait_height([cut], rest[0].height())
    net.assert_agree(a)


def test_two_cut_off_stop_every_commit_without_a_fork_and_the_network_resumes_when_healed(net: Net) -> None:
    a = nodes_of(net)
    evidence_before = a[0].get("/v1/evidence")["evidence"]
    apart = a[2:]
    height = a[0].height()
    for node in apart:
        node.cut()
    try:
        txs = net.anchors(3) + net.anchors(3)
        a[0].submit(txs[:3])
        apart[0].submit(txs[3:])
        # "Never" has no deadline: watch long enough for several rounds, with their growing timeouts.
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            for node in a:
                assert node.height() == height, f"{node.name} committed a block with two of four cut off"
            time.sleep(0.2)
    finally:
        for node in apart:
            node.heal()
    net.wait_committed(txs, a)
    net.assert_agree(a)
    assert a[0].get("/v1/evidence")["evidence"] == evidence_before
