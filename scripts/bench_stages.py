"""Where a node's CPU per transaction goes: each stage of a transaction's way through one node, timed in
one thread and counted in Ed25519 checks (1.0 is the signature check alone).

The stages are the node's own code (node.service, node.peers, storage.chain), run in this one thread
on a real LevelDB store: a peer's gossip envelope is checked and its transactions admitted (decode,
signature, dry run, mempool), the block is made (as its proposer would) and its proposal encoded and
decoded, the block checked (as the other nodes do), committed, and the mempool updated. Blocks of
`--block-txs` fresh anchors by eight accredited issuers, each for a holder of its own, as in
`scripts/bench network`. Each window of `--blocks` blocks is reported on its own, so the cost can be
seen growing with the chain. What runs in other threads (LevelDB's compaction) is reported apart.

A network node does the admission, the check of each block it did not make (the block's maker does not
check it again), the commit and the mempool update for every transaction; making a block and encoding
its proposal for one block in n (n authorities). Network I/O, consensus messages and the threads'
contention are not here: the network benchmark's cost minus this one's is their share.

Last line of output: one JSON object {"windows": [{stage: checks per transaction, ...}], ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_verify import Ed25519Yardstick  # this folder is on the path when a script runs

from consensus.messages import Proposal
from ler import codec
from ler.block import (
    GENESIS_FORMAT,
    PRECOMMIT,
    CertSig,
    CommitCertificate,
    Genesis,
    GenesisAuthority,
    GenesisIssuer,
    Vote,
)
from ler.keys import KeyPair, write_key_file
from ler.tx import RecordAnchor, Tx, sign_tx
from node.config import init_data_dir
from node.peers import parse_body, parse_envelope, sign_envelope, verify_envelope
from node.service import NodeService
from node.validator import decode_proposal

CHAIN = "bench-stages"
STAGES = ("gossip in", "admit", "make block", "proposal", "check block", "commit", "after commit")
#: How often each stage runs on a node of an n-authority network, per transaction: all but making a
#: block and encoding its proposal, which one node in n does; the other n - 1 check the block instead.
ONE_IN_N = {"make block", "proposal"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=3, help="windows to report (the chain grows through them)")
    ap.add_argument("--blocks", type=int, default=20, help="blocks per window")
    ap.add_argument("--block-txs", type=int, default=1000)
    ap.add_argument("--authorities", type=int, default=4, help="n, to weigh the stages as a network node does")
    args = ap.parse_args()
    n = args.authorities

    with tempfile.TemporaryDirectory(prefix="ler-bench-stages-") as tmp:
        root = Path(tmp)
        authority, peer = KeyPair.generate(), KeyPair.generate()
        issuers = [KeyPair.generate() for _ in range(8)]
        genesis = Genesis(GENESIS_FORMAT, CHAIN, int(time.time() * 1000) - 10**7,
                          (GenesisAuthority(authority.did, "Bench Authority"),),
                          tuple(GenesisIssuer(k.did, f"Issuer {i}", ("degree",)) for i, k in enumerate(issuers)))
        genesis.save(root / "genesis.json")
        write_key_file(root / "authority.key", authority)
        config = init_data_dir(root / "node", root / "genesis.json", root / "authority.key",
                               "127.0.0.1:8701")  # in this process: nothing listens
        svc = NodeService(config, authority)
        try:
            windows = asyncio.run(run(svc, authority, peer, issuers, genesis.genesis_time, args))
        finally:
            svc.close()

    print(f"{'stage':<14}" + "".join(f"{f'window {i + 1}':>11}" for i in range(len(windows))))
    for stage in STAGES:
        print(f"{stage:<14}" + "".join(f"{w[stage]:>11.3f}" for w in windows))
    for label, key in ((f"node of {n}", "node"), ("compaction", "other threads"), ("Ed25519 /s", "verify_per_s")):
        print(f"{label:<14}" + "".join(f"{w[key]:>11.3f}" if key != "verify_per_s" else f"{w[key]:>11,.0f}"
                                       for w in windows))
    print(json.dumps({"block_txs": args.block_txs, "blocks_per_window": args.blocks, "authorities": n,
                      "windows": windows}))


async def run(svc: NodeService, authority: KeyPair, peer: KeyPair, issuers: list[KeyPair], t0: int,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    yardstick = Ed25519Yardstick()
    windows = []
    for _ in range(args.windows):
        spent = dict.fromkeys(STAGES, 0.0)
        elsewhere = verifies = verify_time = 0.0
        for _ in range(args.blocks):
            txs = [sign_tx(k, CHAIN, RecordAnchor(os.urandom(16), k.did, KeyPair.generate().did, "degree",
                                                  os.urandom(32), None))
                   for k in (issuers[i % len(issuers)] for i in range(args.block_txs))]
            envelope = gossip_envelope(peer, svc.store.height, txs)
            p0, c0 = time.process_time(), time.thread_time()
            for stage, took in (await one_block(svc, authority, envelope, txs, t0)).items():
                spent[stage] += took
            elsewhere += (time.process_time() - p0) - (time.thread_time() - c0)
            done, took = yardstick.run(0.05)  # between blocks, so that it sees the same machine
            verifies += done
            verify_time += took
        rate = verifies / verify_time
        per_tx = args.blocks * args.block_txs
        window = {stage: spent[stage] / per_tx * rate for stage in STAGES}
        share = 1 / args.authorities
        weight = {stage: share if stage in ONE_IN_N else 1 - share if stage == "check block" else 1.0
                  for stage in STAGES}
        window["node"] = sum(window[stage] * weight[stage] for stage in STAGES)
        window["other threads"] = elsewhere / per_tx * rate
        window["verify_per_s"] = rate
        windows.append({k: round(v, 4) for k, v in window.items()})
    return windows


def gossip_envelope(peer: KeyPair, height: int, txs: list[Tx]) -> bytes:
    """`txs` in a peer envelope, as node/peers.py sends them."""
    raw_body = codec.encode({"boot": b"benchbt1", "seq": height, "height": height, "url": "http://127.0.0.1:9",
                             "proposals": [], "votes": [], "txs": [t.raw for t in txs]})
    return codec.encode({"from": peer.public_key, "body": raw_body, "sig": sign_envelope(peer, CHAIN, raw_body)})


async def one_block(svc: NodeService, authority: KeyPair, envelope: bytes, txs: list[Tx], t0: int) -> dict[str, float]:
    """One block's way through the node: the CPU seconds of this thread in each stage."""
    store, took = svc.store, {}
    clock = time.thread_time

    c = clock()
    sender, body, sig = parse_envelope(envelope)
    assert verify_envelope(sender, CHAIN, body, sig)
    raws = parse_body(body)["txs"]
    c, took["gossip in"] = clock(), clock() - c

    added = svc._ingest_sync(raws)
    c, took["admit"] = clock(), clock() - c
    if len(added) != len(txs):
        raise SystemExit(f"bench: {len(txs) - len(added)} anchors were not admitted")

    h = store.height + 1
    pooled = [p for p in map(svc.mempool.get, (t.tx_id for t in txs)) if p is not None]
    block, _ = store.make_block(pooled, t0 + 1000 * h, 0, authority.public_key, store.cert(h - 1))
    c, took["make block"] = clock(), clock() - c

    block = decode_proposal(Proposal.make(authority, CHAIN, h, 0, -1, block).encode()).value
    c, took["proposal"] = clock(), clock() - c

    result = store.validate_block(block, verified=svc.mempool, known=svc.mempool.get)
    c, took["check block"] = clock(), clock() - c

    vote = Vote.make(authority, CHAIN, PRECOMMIT, h, 0, block.hash)
    store.commit_block(block, CommitCertificate(h, 0, block.hash, (CertSig(vote.validator, vote.sig),)), result)
    c, took["commit"] = clock(), clock() - c

    await svc.after_commit(block, result, None, "bench")
    took["after commit"] = clock() - c
    return took


if __name__ == "__main__":
    main()
