"""Offline verification benchmark: verifications per second of a typical bundle on one core, and bundle
size against the number of records on the chain.

Everything runs in this one process (one core). Figures are reported next to the machine's own Ed25519
verification rate, since a bundle's cost is a few signature checks plus hashing. The two rates are measured
in alternating slices (verification, then Ed25519, ten times over), so that both see the same machine: on
a shared machine the load changes within seconds, and a yardstick measured at another moment would not
tell the code's speed from the machine's.

The size curve uses a synthetic chain: a real LevelDB chain store, blocks of `--block-txs` anchors
committed through the real state machine and sparse Merkle tree, but the filler anchors carry dummy
signatures (execution does not check signatures; the block producer's caller does) so that building a
million-record chain takes minutes, not an hour. The measured record's anchor is genuinely signed, and its
bundle passes full verification before its size is reported.

Last line of output: one JSON object {"verifications_per_s", "bundle_bytes", "records_on_chain", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing

from ler.block import GENESIS_FORMAT, PRECOMMIT, CertSig, CommitCertificate, Genesis, GenesisAuthority, Vote
from ler.bundle import verify_bundle
from ler.keys import KeyPair
from ler.record import RecordDocument, make_claims
from ler.tx import Action, GovVote, RecordAnchor, Tx, sign_tx
from storage.bundles import build_bundle
from storage.chain import ChainStore

CHAIN = "bench"


class Ed25519Yardstick:
    """The machine's Ed25519 verification speed on one core (PyNaCl, a 200-byte message)."""

    def __init__(self) -> None:
        key = nacl.signing.SigningKey.generate()
        self.vk = key.verify_key
        self.msg = os.urandom(200)
        self.sig = key.sign(self.msg).signature

    def run(self, seconds: float) -> tuple[int, float]:
        """Verify for about `seconds`: (verifications done, time taken)."""
        vk, msg, sig = self.vk, self.msg, self.sig
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(200):
                vk.verify(msg, sig)
            n += 200
        return n, time.perf_counter() - t0


class Chain:
    def __init__(self, path: Path) -> None:
        self.authority = KeyPair.generate()
        self.issuer = KeyPair.generate()
        self.genesis = Genesis(GENESIS_FORMAT, CHAIN, 1_700_000_000_000,
                               (GenesisAuthority(self.authority.did, "Bench Authority"),), ())
        self.store = ChainStore(path, self.genesis)
        self.records = 0
        self.commit([sign_tx(self.authority, CHAIN, GovVote(Action("accredit", self.issuer.did, "Bench University",
                                                                    ("degree",), None)))])

    def commit(self, txs: list[Tx]) -> None:
        s = self.store
        h = s.height + 1
        block, result = s.make_block(txs, self.genesis.genesis_time + 1000 * h, 0, self.authority.public_key,
                                     s.cert(h - 1))
        if result.rejected:
            raise SystemExit(f"bench chain: unexpected rejection {result.rejected[0][1]}")
        vote = Vote.make(self.authority, CHAIN, PRECOMMIT, h, 0, block.hash)
        s.commit_block(block, CommitCertificate(h, 0, block.hash, (CertSig(vote.validator, vote.sig),)), result)
        self.records += sum(1 for t in result.applied if t.type == RecordAnchor.TYPE)

    def filler(self, n: int) -> list[Tx]:
        """`n` anchors by the accredited issuer with dummy signatures (never verified, never in a bundle)."""
        out = []
        signer = self.issuer.public_key
        for _ in range(n):
            body = RecordAnchor(os.urandom(16), self.issuer.did, self.issuer.did, "degree", os.urandom(32), None)
            out.append(Tx.from_obj({"chain": CHAIN, "type": RecordAnchor.TYPE, "signer": signer,
                                    "nonce": 0, "body": body.to_obj(), "sig": bytes(64)}))
        return out

    def real_record(self, filler: int) -> RecordDocument:
        holder = KeyPair.generate()
        doc = RecordDocument(CHAIN, os.urandom(16), self.issuer.did, holder.did, "degree", None,
                             make_claims({"degree": "BSc", "field": "Logistics", "awarded": "2009"}))
        tx = sign_tx(self.issuer, CHAIN, RecordAnchor(doc.record_id, self.issuer.did, holder.did, "degree",
                                                      doc.commitment, None))
        txs = self.filler(filler)
        txs.insert(len(txs) // 2, tx)
        self.commit(txs)
        return doc


def measure_verify(bundle_bytes: bytes, genesis: Genesis, seconds: float, ed_seconds: float = 1.5,
                   slices: int = 10) -> tuple[float, float]:
    """(bundle verifications per second over `seconds` in all, Ed25519 verifications per second over
    `ed_seconds` in all), measured in `slices` alternating slices so that both see the same load."""
    result = verify_bundle(bundle_bytes, genesis)
    if result.verdict != "valid":
        raise SystemExit(f"bench: the typical bundle does not verify: {result.verdict}")
    yardstick = Ed25519Yardstick()
    n_verify = n_ed = 0
    t_verify = t_ed = 0.0
    for _ in range(slices):
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / slices:
            verify_bundle(bundle_bytes, genesis)
            n += 1
        t_verify += time.perf_counter() - t0
        n_verify += n
        n, t = yardstick.run(ed_seconds / slices)
        n_ed += n
        t_ed += t
    return n_verify / t_verify, n_ed / t_ed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="records on the chain at the last size point")
    ap.add_argument("--block-txs", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per verification-rate measurement")
    args = ap.parse_args()
    points = sorted({p for p in (1_000, 10_000, 100_000, 1_000_000) if p < args.records} | {args.records})

    sizes = []
    with tempfile.TemporaryDirectory(prefix="ler-bench-") as tmp:
        chain = Chain(Path(tmp) / "db")
        t_build = time.perf_counter()
        for target in points:
            while chain.records < target - args.block_txs:
                chain.commit(chain.filler(args.block_txs))
            doc = chain.real_record(max(0, target - chain.records - 1))
            bundle = build_bundle(chain.store, [(doc.record_id, doc.disclose(["degree", "field"]))])
            raw = bundle.dumps()
            ok = verify_bundle(raw, chain.genesis).verdict == "valid"
            sizes.append({"records_on_chain": chain.records, "blocks": chain.store.height, "bundle_bytes": len(raw),
                          "valid": ok})
            print(f"records {chain.records:>9,}  blocks {chain.store.height:>6,}  bundle {len(raw):>6,} bytes  "
                  f"verifies: {ok}  (built in {time.perf_counter() - t_build:.0f} s)", flush=True)
            if target == points[0]:
                vps, ed = measure_verify(raw, chain.genesis, args.seconds)
                print(f"offline verifications per second of that bundle on one core: {vps:,.0f}; Ed25519 "
                      f"verifications per second on one core (PyNaCl), measured in between: {ed:,.0f}; "
                      f"ratio {vps / ed:.3f}", flush=True)
        chain.store.close()
    last = sizes[-1]
    print(json.dumps({"verifications_per_s": round(vps, 1), "bundle_bytes": last["bundle_bytes"],
                      "records_on_chain": last["records_on_chain"], "ed25519_verify_per_s": round(ed, 1),
                      "verify_ratio_to_ed25519": round(vps / ed, 4), "size_curve": sizes}))


if __name__ == "__main__":
    sys.exit(main())
