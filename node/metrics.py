"""The node's counters and gauges, rendered in Prometheus text format (version 0.0.4) at /metrics.

Counters only go up and are kept here; gauges that mirror live state (height, mempool size, peers,
sync lag) are read from their owners when /metrics is scraped, through the `gauges` callback, so they
are never stale. One Metrics per node process; everything runs on the event loop except the commit
latency observation, which is a plain float append guarded by the GIL.
"""

from __future__ import annotations

import bisect
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field

#: Commit latency buckets in seconds: a height on a quiet local network takes milliseconds, one that
#: waits out a dead proposer's timeout a second or more.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = []
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.n}")
        return out


@dataclass(slots=True)
class Metrics:
    blocks_committed: int = 0
    txs_committed: int = 0
    votes_received: int = 0
    proposals_received: int = 0
    txs_gossiped_in: int = 0
    gossip_dropped: int = 0
    gossip_failed: int = 0
    peer_rejected: int = 0
    evidence: int = 0
    sync_blocks: int = 0
    commit_latency: Histogram = field(default_factory=Histogram)
    #: name -> (help, value) of live gauges, filled in by the daemon at scrape time
    gauges: Callable[[], dict[str, tuple[str, float]]] | None = None
    #: (connections open now, connections refused so far) of the node's HTTP listener, once it listens
    connections: Callable[[], tuple[int, int]] | None = None

    def render(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {_num(value)}")

        for name, (help_text, value) in (self.gauges() if self.gauges else {}).items():
            metric(name, "gauge", help_text, value)
        metric("ler_blocks_committed_total", "counter", "Blocks this node committed (by consensus or sync)",
               self.blocks_committed)
        metric("ler_txs_committed_total", "counter", "Transactions in the blocks this node committed",
               self.txs_committed)
        metric("ler_votes_received_total", "counter", "Consensus votes received from peers",
               self.votes_received)
        metric("ler_proposals_received_total", "counter", "Consensus proposals received from peers",
               self.proposals_received)
        metric("ler_gossip_txs_received_total", "counter", "Transactions received from peers",
               self.txs_gossiped_in)
        metric("ler_gossip_dropped_total", "counter", "Outbound gossip items dropped (a full peer queue)",
               self.gossip_dropped)
        metric("ler_gossip_failed_total", "counter",
               "Outbound gossip requests that failed (unreachable, timed out or refused); each is retried "
               "after a back-off unless the peer refused its content", self.gossip_failed)
        metric("ler_peer_messages_refused_total", "counter",
               "Peer requests refused (unknown sender, bad signature, malformed)", self.peer_rejected)
        metric("ler_evidence_total", "counter", "Equivocation evidence recorded", self.evidence)
        metric("ler_sync_blocks_total", "counter", "Blocks committed through block sync", self.sync_blocks)
        if self.connections is not None:
            open_now, refused = self.connections()
            metric("ler_http_connections", "gauge", "HTTP connections open to this node", open_now)
            metric("ler_http_connections_refused_total", "counter",
                   "HTTP connections closed on arrival: the node held [limits] max_connections, or their "
                   "address max_connections_per_address", refused)
        fds = open_fds()
        if fds is not None:
            metric("process_open_fds", "gauge", "File descriptors this process holds open", fds)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            metric("process_max_fds", "gauge", "This process's open-file limit (soft)", soft)
        lines.append("# HELP ler_commit_latency_seconds From starting a height to its block being durable")
        lines.append("# TYPE ler_commit_latency_seconds histogram")
        lines.extend(self.commit_latency.lines("ler_commit_latency_seconds"))
        return "\n".join(lines) + "\n"


def open_fds() -> int | None:
    """How many file descriptors this process holds, where the system says (/proc), else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6f}"
