"""`ler verify --max-age` and `ler verify --refresh URL` against a real node process (tests/node_proc.py).

The bundle is made by the node, then the chain moves on (a revocation, more blocks); the verifier refreshes
the status part from the node, trusting nothing it says. A node of another network, or none at all, makes
the refresh fail: never valid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from node_proc import Chain, NodeProc, init_node, make_chain

from ler.record import RecordDocument, make_claims
from ler.tx import RecordAnchor, RecordRevoke, Tx, sign_tx
from node.cli import cli, parse_duration_ms


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LER_KEY_PASSPHRASE", "LER_NODE", "LER_GENESIS", "LER_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return make_chain(tmp_path_factory.mktemp("fresh"), chain_id="fresh-test")


@pytest.fixture(scope="module")
def node(chain: Chain) -> Iterator[NodeProc]:
    proc = NodeProc(init_node(chain, chain.root / "node")).start()
    yield proc
    assert proc.terminate() == 0, proc.log()


def anchored(node: NodeProc, chain: Chain, record_id: bytes | None = None) -> tuple[RecordDocument, int]:
    doc = RecordDocument(chain_id=chain.chain_id, record_id=record_id or os.urandom(16), issuer=chain.issuer.did,
                         holder=chain.issuer.did, rtype="degree", expires=None,
                         claims=make_claims({"degree": "BSc", "awarded": 2009}))
    tx = sign_tx(chain.issuer, chain.chain_id, RecordAnchor(record=doc.record_id, issuer=doc.issuer,
                                                            holder=doc.holder, rtype="degree",
                                                            commitment=doc.commitment, expires=None))
    [res] = node.commit([tx])
    return doc, res["height"]


def bundle_file(node: NodeProc, doc: RecordDocument, path: Path) -> Path:
    r = node.post_json(f"/v1/records/{doc.record_id.hex()}/bundle",
                       {"disclosure": doc.disclose(["degree"]).to_json()})
    assert r.status == 200, r
    path.write_bytes(r.body)
    return path


def revoke(node: NodeProc, chain: Chain, doc: RecordDocument, reason: str) -> int:
    tx: Tx = sign_tx(chain.issuer, chain.chain_id, RecordRevoke(record=doc.record_id, reason=reason))
    return int(node.commit([tx])[0]["height"])


@pytest.mark.parametrize(("text", "ms"), [("30d", 30 * 86_400_000), ("12h", 43_200_000), ("90m", 5_400_000),
                                          ("45s", 45_000), ("600", 600_000), ("0", 0)])
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_bad_max_age_is_bad_usage(chain: Chain, tmp_path: Path) -> None:
    for bad in ("-1", "1w", "1.5h", "h", ""):
        r = run("verify", str(tmp_path / "x.json"), "--genesis", str(chain.genesis_path), "--max-age", bad)
        assert r.exit_code == 2, (bad, r.output)
    r = run("verify", str(tmp_path / "x.json"), "--genesis", str(chain.genesis_path), "--refresh", "ftp://x")
    assert r.exit_code == 2


def test_status_routes(node: NodeProc, chain: Chain) -> None:
    doc, h = anchored(node, chain)
    r = node.get(f"/v1/records/{doc.record_id.hex()}/status?since={h}")
    assert r.status == 200, r
    obj = r.json()
    assert obj["format"] == "ler-status/1" and obj["since"] == h and obj["head"]["header"]["height"] >= h
    r = node.post_json("/v1/status/records", {"records": [doc.record_id.hex()], "since": h})
    assert r.status == 200 and r.json()["records"][0]["record_id"] == obj["records"][0]["record_id"]
    assert node.get(f"/v1/records/{'00' * 16}/status").status == 404
    assert node.get(f"/v1/records/{doc.record_id.hex()}/status?since=0").status == 400
    assert node.get(f"/v1/records/{doc.record_id.hex()}/status?since=x").status == 400
    for body in ({"records": [doc.record_id.hex()]}, {"records": [], "since": 1}, {"records": ["zz"], "since": 1},
                 {"records": [doc.record_id.hex()] * 2, "since": 1}, {"records": [doc.record_id.hex()], "since": True}):
        assert node.post_json("/v1/status/records", body).status == 400, body
    for body in ({"records": [doc.record_id.hex()], "since": 0}, {"records": [doc.record_id.hex()], "since": 1.5},
                 {"records": [doc.record_id.hex()], "since": 10**18}):
        assert node.post_json("/v1/status/records", body).status == 400, body
    # JSON has one number type: a height written 2.0 is the height 2.
    r = node.post_json("/v1/status/records", {"records": [doc.record_id.hex()], "since": float(h)})
    assert r.status == 200 and r.json()["since"] == h
    # A bundle whose head this node has not reached: the node is behind, and says so (not "bad request").
    ahead = node.height() + 1000
    r = node.post_json("/v1/status/records", {"records": [doc.record_id.hex()], "since": ahead})
    assert r.status == 409 and "behind" in r.json()["error"], r
    r = node.get(f"/v1/records/{doc.record_id.hex()}/status?since={ahead}")
    assert r.status == 409 and "behind" in r.json()["error"], r


def test_verify_refresh_from_a_real_node(node: NodeProc, chain: Chain, tmp_path: Path) -> None:
    doc, h = anchored(node, chain)
    bundle = bundle_file(node, doc, tmp_path / "b.json")
    other, _ = anchored(node, chain)                   # the chain moves on
    head = node.height()
    assert head > h
    g = str(chain.genesis_path)

    r = run("verify", str(bundle), "--genesis", g, "--refresh", node.url)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("VALID: ") and f"as of block {head} " in lines[0]
    assert lines[1].startswith(f"refreshed from {node.url}: as of block {head} (")
    assert f"[ok] refresh: refreshed from {node.url}" in r.stdout
    assert f"extends block {h}'s" in r.stdout

    r = run("verify", str(bundle), "--genesis", g, "--refresh", node.url, "--json")
    obj = json.loads(r.stdout)
    assert r.exit_code == 0 and obj["as_of"]["height"] == head and obj["refresh"]["ok"] is True

    # revoked after the bundle was made: the bundle alone still says valid, the refresh says revoked
    rh = revoke(node, chain, doc, "issued in error")
    assert run("verify", str(bundle), "--genesis", g).exit_code == 0
    r = run("verify", str(bundle), "--genesis", g, "--refresh", node.url, "--max-age", "30d")
    assert r.exit_code == 1
    assert r.stdout.startswith(f"REVOKED: revoked by its issuer at block {rh}: issued in error")
    assert other.record_id != doc.record_id


def test_max_age_with_and_without_refresh(node: NodeProc, chain: Chain, tmp_path: Path) -> None:
    doc, _ = anchored(node, chain)
    bundle = bundle_file(node, doc, tmp_path / "b.json")
    g = str(chain.genesis_path)
    r = run("verify", str(bundle), "--genesis", g, "--max-age", "0")
    assert r.exit_code == 1 and r.stdout.startswith("STALE: ")
    assert "[FAIL] fresh: the status is " in r.stdout
    r = run("verify", str(bundle), "--genesis", g, "--max-age", "1h")
    assert r.exit_code == 0 and "[ok] fresh: " in r.stdout
    r = run("verify", str(bundle), "--genesis", g, "--refresh", node.url, "--max-age", "1h")
    assert r.exit_code == 0 and "[ok] fresh: " in r.stdout


def test_refresh_from_a_wrong_or_missing_node_fails(node: NodeProc, chain: Chain, tmp_path: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    doc, _ = anchored(node, chain)
    bundle = bundle_file(node, doc, tmp_path / "b.json")
    g = str(chain.genesis_path)
    r = run("verify", str(bundle), "--genesis", g, "--refresh", "http://127.0.0.1:9")
    assert r.exit_code == 1 and r.stdout.startswith("REFRESH FAILED: could not refresh from http://127.0.0.1:9")
    assert "the bundle alone speaks as of block" in r.stdout
    # a node of another network with the same chain id, holding a record of the same id: never valid
    other_chain = make_chain(tmp_path_factory.mktemp("other"), chain_id="fresh-test")
    other = NodeProc(init_node(other_chain, other_chain.root / "node")).start()
    try:
        while other.height() < node.height():  # at least as long as ours, so it can answer
            anchored(other, other_chain)
        anchored(other, other_chain, record_id=doc.record_id)
        r = run("verify", str(bundle), "--genesis", g, "--refresh", other.url)
        assert r.exit_code == 1 and r.stdout.startswith("REFRESH FAILED: "), r.stdout
        assert "another network" in r.stdout
    finally:
        assert other.terminate() == 0, other.log()
