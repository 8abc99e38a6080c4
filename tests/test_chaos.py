"""Chaos under load: 4 authorities and 1 observer as real processes, clients submitting to every node, and
kill -9 of random authorities (one at a time, sometimes two for a while, so that commits stop) each
restarted later with `ler node run --data DIR`. Afterwards every transaction any node acknowledged is
committed, every node holds the same chain, and no node reports evidence (a crash and restart is not
equivocation) or logged a traceback.

The schedule of kills and restarts comes from a fixed seed; what the processes do in between does not.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_proc import http, tx_json_body, wait_until
from test_network import Net, Node, running_testnet

pytestmark = pytest.mark.slow

SEED = 20261203
CHAOS_S = 30.0


@pytest.fixture
def chaos_net(tmp_path: Path) -> Iterator[Net]:
    with running_testnet(tmp_path, "chaos-test") as net:
        yield net


class Load(threading.Thread):
    """Batches of fresh anchors to a random live node; remembers what was acknowledged, and by whom."""

    def __init__(self, net: Net, rng: random.Random) -> None:
        super().__init__(name="chaos-load")
        self.net, self.rng = net, rng
        self.acked: dict[bytes, str] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.05):
                node = self.rng.choice(self.net.nodes)
                txs = self.net.anchors(10)
                try:
                    r = http(node.url, "POST", "/v1/txs", tx_json_body(txs), "application/json", timeout=10)
                except OSError:
                    continue  # killed (or not yet up): nothing of the batch was acknowledged
                if r.status != 202:
                    continue  # refused whole (busy): not acknowledged either
                for tx, res in zip(txs, r.json()["results"], strict=True):
                    assert res["status"] in ("pending", "committed"), res
                    self.acked[tx.tx_id] = node.name
        except BaseException as exc:
            self.error = exc


def test_kill_9_of_random_authorities_under_load_loses_nothing_and_forks_nothing(chaos_net: Net) -> None:
    net = chaos_net
    rng = random.Random(SEED)
    load = Load(net, random.Random(SEED + 1))
    load.start()
    down: list[Node] = []
    kills = 0
    try:
        end = time.monotonic() + CHAOS_S
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.5, 2.5))
            if down and (len(down) > 1 or rng.random() < 0.7):
                down.pop(0).start()
            if len(down) < 2:
                victim = rng.choice([n for n in net.authorities if n not in down])
                victim.kill()
                kills += 1
                down.append(victim)
    finally:
        load.stop.set()
        load.join(30)
        for node in down:
            node.start()
    assert load.error is None, load.error
    assert kills >= 10 and len(load.acked) >= 1_000, (kills, len(load.acked))

    entry = net.nodes[0]
    remaining = list(load.acked)

    def all_committed() -> bool:
        nonlocal remaining
        remaining = [i for i in remaining if (entry.try_get(f"/v1/txs/{i.hex()}") or {}).get("status") != "committed"]
        return not remaining

    wait_until(all_committed, 120, "every acknowledged transaction to commit", poll=0.5)
    top = max(n.height() for n in net.nodes)
    net.wait_height(net.nodes, top)
    assert net.assert_agree(net.nodes) == top
    for node in net.nodes:
        assert node.get("/v1/evidence")["evidence"] == [], node.name
        assert "Traceback" not in node.log(), node.name
