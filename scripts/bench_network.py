"""Network benchmark: a local 4-authority network under a load of record anchors.

1. Starts `ler testnet up` with N authorities in a temporary folder and accredits `--issuers` issuers.
2. Saturation, `--runs` times (3) on the same network: pre-signs `--txs` fresh anchors, submits them in
   msgpack batches spread over all nodes from several client threads, and reports finalized
   transactions per second (first submission to last commit) with commit latency p50/p99. The figures
   reported are the median run's (the machine is shared and its speed drifts; the chain grows by
   `--txs` records per run, so later runs meet a larger state).
3. Half load: submits at half the measured rate (or at `--half-rate` tx/s, e.g. half of a target) for
   `--half-seconds` and reports latency p50/p99 there.
4. CPU seconds per node (from /proc) and of this load generator (its clients and commit watcher),
   and, measured in the same run (before the network starts and before each saturation run; the
   median is used), this machine's Ed25519 verifications per second on one core, with
   throughput / (cores x verify rate / nodes): each node verifies each signature once, so that bound
   is what signature checks alone would allow. That ratio is the product of two figures each run
   reports: the share of the cores the nodes kept busy, and the inverse of a node's CPU per
   transaction counted in Ed25519 checks (bound_ratio = busy / cost). The cost depends less on how
   busy the shared machine is than throughput does (though not little under heavy load from other
   work), so it is the figure to compare code with.

Latency is measured from the moment a batch is sent to the moment a client polling the node sees the
block holding the transaction (the poll interval is part of it). The last line is one JSON object:
{"nodes", "txs", "tps", "p50_ms", "p99_ms", "verify_per_s_per_core", "bound_ratio", ...}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import nacl.signing

from ler import codec, keys
from ler.keys import KeyPair
from ler.tx import Action, GovVote, RecordAnchor, Tx, sign_tx
from node import testnet

CLK_TCK = os.sysconf("SC_CLK_TCK")


def ed25519_verify_rate(seconds: float = 1.5) -> float:
    key = nacl.signing.SigningKey.generate()
    vk, msg = key.verify_key, os.urandom(300)
    sig = key.sign(msg).signature
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            vk.verify(msg, sig)
        n += 200
    return n / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def http_json(url: str, body: bytes | None = None, ctype: str = "application/json", timeout: float = 60) -> Any:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def submit_msgpack(url: str, txs: list[Tx]) -> None:
    body = codec.encode([t.raw for t in txs])
    try:
        http_json(url + "/v1/txs", body, "application/msgpack")
    except urllib.error.HTTPError as exc:  # 400 when all were refused: report, never silently
        raise SystemExit(f"bench: a batch was refused: {exc.read()[:300]!r}") from None


class CommitWatcher(threading.Thread):
    """Polls one node for new blocks and notes when each transaction id was first seen committed.

    It keeps one connection open, as a client polling a node would: a new one every 20 ms would add
    the work of accepting it to the node it polls, and so to the figures measured."""

    def __init__(self, url: str, start_height: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url, self.height, self.interval = url, start_height, interval
        self.seen: dict[bytes, float] = {}
        self.stop = threading.Event()
        self.polls = self.connections = 0

    def run(self) -> None:
        where = urllib.parse.urlsplit(self.url)
        conn: http.client.HTTPConnection | None = None

        def get(path: str) -> Any:
            assert conn is not None
            conn.request("GET", path)
            with conn.getresponse() as resp:
                body = resp.read()
                if resp.status != 200:
                    raise OSError(f"GET {path}: {resp.status}")
            return json.loads(body)

        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
                    self.connections += 1
                latest = get("/v1/status")["height"]
                self.polls += 1
                while self.height < latest:
                    block = get(f"/v1/blocks/{self.height + 1}")
                    self.height += 1
                    now = time.perf_counter()
                    for tx_id in block["txs"]:
                        self.seen.setdefault(bytes.fromhex(tx_id), now)
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None  # the next poll opens a new one
            self.stop.wait(self.interval)
        if conn is not None:
            conn.close()


def wait_all(watcher: CommitWatcher, ids: list[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(i in watcher.seen for i in ids):
            return True
        time.sleep(0.05)
    return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_load(urls: list[str], batches: list[list[Tx]], watcher: CommitWatcher, clients: int,
             rate: float | None) -> tuple[dict[bytes, float], float]:
    """Send batches from `clients` threads (paced to `rate` tx/s if given); return send times per tx."""
    sent: dict[bytes, float] = {}
    lock = threading.Lock()
    t_start = time.perf_counter()
    cursor = iter(enumerate(batches))

    def client(n: int) -> None:
        while True:
            with lock:
                item = next(cursor, None)
            if item is None:
                return
            i, batch = item
            if rate:
                due = t_start + sum(len(b) for b in batches[:i]) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            now = time.perf_counter()
            with lock:
                for t in batch:
                    sent[t.tx_id] = now
            submit_msgpack(urls[i % len(urls)], batch)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent, t_start


def anchors(issuers: list[KeyPair], chain: str, n: int, rtype: str) -> list[Tx]:
    """`n` signed anchors, each for a holder of its own (as records are: nodes parse each holder's did)."""
    out = []
    for i in range(n):
        k = issuers[i % len(issuers)]
        holder = keys.did_from_public_key(os.urandom(32))
        out.append(sign_tx(k, chain, RecordAnchor(os.urandom(16), k.did, holder, rtype, os.urandom(32), None)))
    return out


def saturate(n: int, args: argparse.Namespace, urls: list[str], pids: list[int], issuers: list[KeyPair],
             chain: str, watcher: CommitWatcher) -> dict[str, Any]:
    """One saturation run of `args.txs` fresh anchors, with this machine's Ed25519 rate measured just
    before it (the machine's speed drifts between runs)."""
    ed = ed25519_verify_rate(1.0)
    print(f"run {n}: signing {args.txs:,} anchors ...", flush=True)
    txs = anchors(issuers, chain, args.txs, "degree")
    batches = [txs[i:i + args.batch] for i in range(0, len(txs), args.batch)]
    cpu0 = [cpu_seconds(p) for p in pids]
    own0 = time.process_time()
    sent, t0 = run_load(urls, batches, watcher, args.clients, None)
    ids = [t.tx_id for t in txs]
    if not wait_all(watcher, ids, timeout=600):
        missing = sum(1 for i in ids if i not in watcher.seen)
        raise SystemExit(f"bench: {missing} transactions not committed within 10 minutes")
    t_end = max(watcher.seen[i] for i in ids)
    cpu1 = [cpu_seconds(p) for p in pids]
    own = time.process_time() - own0
    tps = len(ids) / (t_end - t0)
    lat = [(watcher.seen[i] - sent[i]) * 1000 for i in ids]
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    cpu = [round(u, 1) for u in used]
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    # The ratio to the bound splits exactly into two figures: bound_ratio = busy / cost, where cost is a
    # node's CPU per transaction counted in Ed25519 checks and busy the share of the cores the nodes used.
    cost = statistics.mean(used) / len(ids) * ed
    busy = sum(used) / ((os.cpu_count() or 1) * (t_end - t0))
    print(f"run {n}: {len(ids):,} txs in {t_end - t0:.1f} s = {tps:,.0f} finalized tx/s (Ed25519 {ed:,.0f}/s "
          f"per core just before); latency p50 {p50:.0f} ms, p99 {p99:.0f} ms; CPU seconds per node {cpu}, "
          f"load generator {own:.1f}; a node's CPU per transaction {cost:.2f} Ed25519 checks, "
          f"cores {busy:.0%} busy with the nodes", flush=True)
    return {"tps": tps, "ed": ed, "p50": p50, "p99": p99, "cpu": cpu, "own": own, "wall": t_end - t0,
            "cost": cost, "busy": busy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--txs", type=int, default=20_000, help="anchors per saturation run")
    ap.add_argument("--runs", type=int, default=3, help="saturation runs; the median is reported")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--issuers", type=int, default=8)
    ap.add_argument("--half-seconds", type=float, default=10.0)
    ap.add_argument("--half-rate", type=float, default=None,
                    help="tx/s offered in the latency phase (default: half the saturation throughput)")
    ap.add_argument("--keep", action="store_true", help="leave the network folder in place")
    args = ap.parse_args()
    if args.runs < 1 or args.txs < 1:
        ap.error("--runs and --txs must be at least 1")

    ed = ed25519_verify_rate()
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores, Ed25519 verify {ed:,.0f}/s per core (PyNaCl)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ler-bench-net-"))
    try:
        manifest = testnet.up(tmp, authorities=args.nodes, observers=0, base_port=18700, chain_id="bench")
        urls = [n["url"] for n in manifest["nodes"]]
        pids = [n["pid"] for n in manifest["nodes"]]
        chain = manifest["chain_id"]
        authorities = [keys.read_key_file(n["key"]) for n in manifest["nodes"]]
        issuers = [KeyPair.generate() for _ in range(args.issuers)]
        votes = [sign_tx(a, chain, GovVote(Action("accredit", k.did, f"Bench Issuer {i}", ("degree",), None)))
                 for i, k in enumerate(issuers) for a in authorities[: len(authorities) * 2 // 3 + 1]]
        http_json(urls[0] + "/v1/txs?wait=1&timeout=60", json.dumps({"txs": [v.to_json() for v in votes]}).encode())
        for k in issuers:
            http_json(f"{urls[0]}/v1/issuers/{k.did}")  # raises if the accreditation did not execute
        print(f"network up: {args.nodes} authorities, {args.issuers} accredited issuers", flush=True)

        start_h = http_json(urls[0] + "/v1/status")["height"]
        watcher = CommitWatcher(urls[0], start_h)
        watcher.start()
        runs = []
        for n in range(1, args.runs + 1):
            runs.append(saturate(n, args, urls, pids, issuers, chain, watcher))
        by_tps = sorted(runs, key=lambda r: r["tps"])
        median = by_tps[len(by_tps) // 2]
        tps = median["tps"]
        ed = statistics.median([ed, *(r["ed"] for r in runs)])
        each = ", ".join(f"{r['tps']:,.0f}" for r in runs)
        print(f"median of {len(runs)} saturation runs: {tps:,.0f} finalized tx/s (runs: {each}); "
              f"Ed25519 {ed:,.0f}/s per core (median of its measurements)", flush=True)

        half_rate = args.half_rate or tps / 2
        n_half = max(args.batch, int(half_rate * args.half_seconds))
        half = anchors(issuers, chain, n_half, "degree")
        small = max(1, min(args.batch, int(half_rate / 20)))  # about 20 batches a second
        hb = [half[i:i + small] for i in range(0, len(half), small)]
        sent_h, _ = run_load(urls, hb, watcher, args.clients, half_rate)
        hid = [t.tx_id for t in half]
        if not wait_all(watcher, hid, timeout=300):
            raise SystemExit("bench: half-load transactions not all committed")
        lat_h = [(watcher.seen[i] - sent_h[i]) * 1000 for i in hid]
        p50, p99 = percentile(lat_h, 0.5), percentile(lat_h, 0.99)
        print(f"half load ({half_rate:,.0f} tx/s offered, {len(hid):,} txs): latency p50 {p50:.0f} ms, "
              f"p99 {p99:.0f} ms", flush=True)
        watcher.stop.set()
        watcher.join(timeout=5)
        print(f"commit watcher: {watcher.polls:,} polls of {urls[0]} over {watcher.connections} "
              f"connection(s)", flush=True)
        bound = cores * ed / args.nodes
        result = {"nodes": args.nodes, "txs": args.txs, "tps": round(tps, 1), "p50_ms": round(p50, 1),
                  "p99_ms": round(p99, 1), "verify_per_s_per_core": round(ed, 1),
                  "bound_ratio": round(tps / bound, 4), "runs": len(runs),
                  "tps_runs": [round(r["tps"], 1) for r in runs],
                  "verify_per_s_runs": [round(r["ed"], 1) for r in runs],
                  "saturation_p50_ms": round(median["p50"], 1), "saturation_p99_ms": round(median["p99"], 1),
                  "cpu_s_per_node": median["cpu"], "cpu_s_load_generator": round(median["own"], 1),
                  "wall_s": round(median["wall"], 2), "cores": cores, "half_load_tps": round(half_rate, 1),
                  "cpu_per_tx_in_verifies_runs": [round(r["cost"], 3) for r in runs],
                  "cores_busy_runs": [round(r["busy"], 3) for r in runs]}
    finally:
        try:
            testnet.down(tmp)
        except testnet.TestnetError:
            pass
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
