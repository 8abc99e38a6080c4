"""The HTTP API of a real node process: every route's happy path, and bad input of every kind.

One node per module (a single-authority chain with one genesis issuer), started with `node run` in its
own folder, reached over real HTTP on 127.0.0.1. Every refusal must be a 4xx JSON answer that says why,
never a 500, and the node must go on working afterwards.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import pytest
from node_proc import LER, Chain, NodeProc, Reply, init_node, make_chain, tx_json_body, tx_msgpack_body

from ler import codec
from ler.block import CommitCertificate, Header
from ler.bundle import verify_bundle
from ler.keys import KeyPair
from ler.record import RecordDocument, make_claims
from ler.tx import Action, GovVote, RecordAnchor, RecordEndorse, RecordRevoke, Tx, sign_tx
from node.api import Api

pytestmark = pytest.mark.slow

MAX_BODY = 256 * 1024
CLAIMS = {"degree": "BSc", "field": "Logistics", "awarded": "2009"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return make_chain(tmp_path_factory.mktemp("api"), chain_id="api-test")


@pytest.fixture(scope="module")
def node(chain: Chain) -> Iterator[NodeProc]:
    # batch_ms 100: a submitted transaction stays pending for a moment, so "pending" can be observed.
    data = init_node(chain, chain.root / "node", limits={"max_body_bytes": MAX_BODY, "wait_timeout_s": 20},
                     blocks={"batch_ms": 100})
    proc = NodeProc(data).start()
    yield proc
    assert proc.terminate() == 0, proc.log()


@pytest.fixture(scope="module")
def api_doc(node: NodeProc) -> dict[str, Any]:
    return node.get_json("/v1/openapi.json")


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    """The document's operation serving `method` on the concrete `path` (None if it lists none)."""
    path = path.partition("?")[0]
    for template, ops in doc["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}/]+\}", "[^/]+", template), path) and method.lower() in ops:
            return ops[method.lower()]
    return None


def _schema_check(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Validate `value` against `schema`, whose $refs point into the document's components."""
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(value)


def documented(doc: dict[str, Any], method: str, path: str, r: Reply) -> None:
    """The answer is one the document promises: a listed status, and a JSON body of its schema."""
    op = _operation(doc, method, path)
    if op is None:  # an unrouted path or method: 404 or 405, nothing to look up
        assert r.status in (404, 405), r
        return
    assert str(r.status) in op["responses"], (method, path, r.status, sorted(op["responses"]))
    media = op["responses"][str(r.status)]["content"]
    if r.content_type == "application/json":
        _schema_check(doc, media["application/json"]["schema"], r.json())
    else:
        assert r.content_type in media, (method, path, r)


def request_documented(doc: dict[str, Any], method: str, path: str, body: Any) -> None:
    """A JSON request body the node takes fits the document's schema for it."""
    op = _operation(doc, method, path)
    assert op is not None, (method, path)
    _schema_check(doc, op["requestBody"]["content"]["application/json"]["schema"], body)


def anchor(chain: Chain, issuer: KeyPair | None = None, holder: str | None = None, rtype: str = "degree",
           claims: dict[str, Any] | None = None, record_id: bytes | None = None,
           issuer_did: str | None = None) -> tuple[RecordDocument, Tx]:
    """A record document and its signed record.anchor (by the genesis issuer unless told otherwise)."""
    key = issuer or chain.issuer
    did = issuer_did or key.did
    doc = RecordDocument(chain_id=chain.chain_id, record_id=record_id or os.urandom(16), issuer=did,
                         holder=holder or KeyPair.generate().did, rtype=rtype, expires=None,
                         claims=make_claims(claims or CLAIMS))
    tx = sign_tx(key, chain.chain_id, RecordAnchor(record=doc.record_id, issuer=did, holder=doc.holder,
                                                   rtype=rtype, commitment=doc.commitment, expires=None))
    return doc, tx


def committed_record(node: NodeProc, chain: Chain, **kw: Any) -> tuple[RecordDocument, Tx, int]:
    doc, tx = anchor(chain, **kw)
    [res] = node.commit([tx])
    return doc, tx, res["height"]


def refused(r: Reply, status: int | None = None) -> str:
    """Assert a 4xx JSON refusal with a reason; the reason (a submission's per-transaction reasons joined)."""
    assert 400 <= r.status < 500, r
    if status is not None:
        assert r.status == status, r
    assert r.content_type == "application/json", r
    body = r.json()
    assert isinstance(body, dict), r
    if "error" in body:
        assert isinstance(body["error"], str) and body["error"].strip(), r
        return str(body["error"])
    # An all-refused submission answers 400 with one result per transaction, each with its reason.
    results = body["results"]
    assert results and all(x["status"] == "rejected" and x["error"] and x["rule"] for x in results), r
    return "; ".join(x["error"] for x in results)


def results_of(r: Reply) -> list[dict[str, Any]]:
    return list(r.json()["results"])


# --- status, genesis, health, OpenAPI -----------------------------------------------------------------

def test_status_genesis_and_health(node: NodeProc, chain: Chain) -> None:
    st = node.get_json("/v1/status")
    assert st["chain_id"] == "api-test"
    assert st["genesis_hash"] == chain.genesis.hash.hex()
    assert st["node"] == chain.authority.did and st["role"] == "authority" and st["producing"] is True
    assert isinstance(st["height"], int) and st["mempool"]["txs"] >= 0 and st["version"]
    assert node.get_json("/v1/genesis") == chain.genesis.to_json()
    health = node.get_json("/health")
    assert health["ok"] is True and isinstance(health["height"], int)


def test_openapi_document_lists_every_route(node: NodeProc) -> None:
    r = node.get("/v1/openapi.json")
    assert r.status == 200 and r.content_type == "application/json"
    doc = json.loads(r.body)
    assert doc["openapi"].startswith("3.") and doc["info"]["title"]
    served = {(rd.method.lower(), rd.path) for rd in Api(None).routes()}  # type: ignore[arg-type]
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served <= documented, served - documented
    for (method, path) in served:
        assert doc["paths"][path][method]["responses"], (method, path)


# --- submitting --------------------------------------------------------------------------------------

def test_submit_one_json_transaction_then_poll_it(node: NodeProc, chain: Chain, api_doc: dict[str, Any]) -> None:
    _, tx = anchor(chain)
    request_documented(api_doc, "POST", "/v1/txs", tx.to_json())
    request_documented(api_doc, "POST", "/v1/txs", {"txs": [tx.to_json()]})
    r = node.request("POST", "/v1/txs", json.dumps(tx.to_json()).encode(), "application/json")
    assert r.status == 202, r
    documented(api_doc, "POST", "/v1/txs", r)
    [res] = results_of(r)
    assert res == {"id": tx.tx_id.hex(), "status": "pending", "height": None, "index": None, "error": None,
                   "rule": None}
    st = node.wait_committed([tx.tx_id])[tx.tx_id]
    assert st["status"] == "committed" and st["height"] >= 1 and st["index"] == 0
    assert st["tx"] == tx.to_json()


def test_a_pending_transaction_reads_as_pending(node: NodeProc, chain: Chain) -> None:
    # The node waits batch_ms (100 ms) before it makes a block; a status read right after the
    # submission usually falls inside that window. A slow moment can miss it: try a few times.
    for _ in range(10):
        _, tx = anchor(chain)
        assert node.submit([tx]).status == 202
        st = node.tx_status(tx.tx_id)
        assert st is not None and st["status"] in ("pending", "committed"), st
        node.wait_committed([tx.tx_id])
        if st["status"] == "pending":
            assert st["height"] is None and st["tx"] == tx.to_json()
            return
    pytest.fail("never saw a transaction pending in 10 tries")


def test_submit_json_batch_and_wait(node: NodeProc, chain: Chain) -> None:
    txs = [anchor(chain)[1] for _ in range(5)]
    r = node.request("POST", "/v1/txs?wait=1", tx_json_body(txs), "application/json")
    assert r.status == 200, r
    results = results_of(r)
    assert [x["id"] for x in results] == [t.tx_id.hex() for t in txs]
    assert all(x["status"] == "committed" and isinstance(x["height"], int) for x in results)
    heights = {x["height"] for x in results}
    block = node.get_json(f"/v1/blocks/{max(heights)}")
    assert set(block["txs"]) >= {x["id"] for x in results if x["height"] == max(heights)}


def test_submit_msgpack_batch(node: NodeProc, chain: Chain) -> None:
    txs = [anchor(chain)[1] for _ in range(4)]
    body = tx_msgpack_body(txs)
    assert codec.decode(body) == [t.raw for t in txs]  # canonical array of bin
    r = node.request("POST", "/v1/txs?wait=true&timeout=15", body, "application/msgpack")
    assert r.status == 200, r
    assert [(x["id"], x["status"]) for x in results_of(r)] == [(t.tx_id.hex(), "committed") for t in txs]
    r = node.request("POST", "/v1/txs", tx_msgpack_body([anchor(chain)[1]]), "application/x-msgpack")
    assert r.status == 202 and results_of(r)[0]["status"] == "pending"


def test_the_same_pending_transaction_twice_is_accepted_once(node: NodeProc, chain: Chain) -> None:
    _, tx = anchor(chain)
    r = node.submit([tx, tx], wait=True)
    assert r.status == 200
    assert [x["status"] for x in results_of(r)] == ["committed", "committed"]
    blocks = {x["height"] for x in results_of(r)}
    ids = [i for h in blocks for i in node.get_json(f"/v1/blocks/{h}")["txs"]]
    assert ids.count(tx.tx_id.hex()) == 1


def test_a_batch_of_good_and_bad_transactions(node: NodeProc, chain: Chain) -> None:
    doc, _, _ = committed_record(node, chain)
    good = [anchor(chain)[1] for _ in range(3)]
    _, bad_sig = anchor(chain)
    forged = Tx.from_json({**bad_sig.to_json(), "id": None, "sig": _flip_hex(bad_sig.sig.hex())})
    other_chain = sign_tx(chain.issuer, "another-chain", anchor(chain)[1].body)
    stranger_revoke = sign_tx(KeyPair.generate(), chain.chain_id, RecordRevoke(record=doc.record_id, reason="x"))
    items = [good[0], forged, good[1], other_chain, {"type": "nonsense"}, stranger_revoke, good[2]]
    body = {"txs": [t.to_json() if isinstance(t, Tx) else t for t in items]}
    r = node.request("POST", "/v1/txs?wait=1", json.dumps(body).encode(), "application/json")
    assert r.status == 200, r
    res = results_of(r)
    assert [x["status"] for x in res] == ["committed", "rejected", "committed", "rejected", "rejected",
                                          "rejected", "committed"]
    assert [x["rule"] for x in res if x["status"] == "rejected"] == [
        "tx.signature", "tx.chain", "tx.decode", "revoke.issuer"]
    assert all(x["error"] for x in res if x["status"] == "rejected")
    assert res[4]["id"] is None  # it never decoded, so it has no id
    for t in good:
        assert node.tx_status(t.tx_id)["status"] == "committed"  # type: ignore[index]
    st = node.tx_status(forged.tx_id)  # refused at the door, and remembered as refused (never pending)
    assert st is not None and st["status"] == "rejected" and st["rule"] == "tx.signature" and st["tx"] is None


def _flip_hex(h: str, at: int = 10) -> str:
    b = bytearray(bytes.fromhex(h))
    b[at] ^= 0x01
    return b.hex()


def test_a_rule_broken_inside_a_block_is_reported_as_rejected(node: NodeProc, chain: Chain) -> None:
    # Two anchors of one record id in one batch: both pass the check against the committed state, the
    # block takes the first and refuses the second (anchor.duplicate); its status says so afterwards.
    rid = os.urandom(16)
    _, first = anchor(chain, record_id=rid)
    _, second = anchor(chain, record_id=rid)
    r = node.submit([first, second], wait=True)
    assert r.status == 200, r
    a, b = results_of(r)
    assert a["status"] == "committed"
    assert b["status"] == "rejected" and b["rule"] == "anchor.duplicate" and "already anchored" in b["error"]
    st = node.tx_status(second.tx_id)
    assert st is not None and st["status"] == "rejected" and st["rule"] == "anchor.duplicate"
    assert st["tx"] is None


@pytest.mark.parametrize("case", ["bad signature", "wrong chain", "replay", "revoke by a non-issuer",
                                  "duplicate anchor", "unknown record revoke", "unaccredited endorse self"])
def test_rule_violations_are_refused_with_the_rule(node: NodeProc, chain: Chain, case: str) -> None:
    doc, committed_tx, _ = committed_record(node, chain)
    if case == "bad signature":
        _, tx = anchor(chain)
        body = {**tx.to_json(), "sig": _flip_hex(tx.sig.hex(), 40)}
        del body["id"]
        want = "tx.signature"
        payload: Any = body
    elif case == "wrong chain":
        payload = sign_tx(chain.issuer, "not-" + chain.chain_id, anchor(chain)[1].body).to_json()
        want = "tx.chain"
    elif case == "replay":
        payload, want = committed_tx.to_json(), "tx.replay"
    elif case == "revoke by a non-issuer":
        payload = sign_tx(KeyPair.generate(), chain.chain_id,
                          RecordRevoke(record=doc.record_id, reason="not mine")).to_json()
        want = "revoke.issuer"
    elif case == "duplicate anchor":
        payload, want = anchor(chain, record_id=doc.record_id)[1].to_json(), "anchor.duplicate"
    elif case == "unknown record revoke":
        payload = sign_tx(chain.issuer, chain.chain_id, RecordRevoke(record=os.urandom(16), reason="x")).to_json()
        want = "revoke.unknown"
    else:
        holder = KeyPair.generate()
        mine, tx = anchor(chain, holder=holder.did)
        node.commit([tx])
        payload = sign_tx(holder, chain.chain_id, RecordEndorse(record=mine.record_id, digest=None)).to_json()
        want = "endorse.self"
    r = node.request("POST", "/v1/txs?wait=1", json.dumps(payload).encode(), "application/json")
    reason = refused(r, 400)
    [res] = results_of(r)
    assert res["rule"] == want, res
    assert reason
    if case == "replay":
        assert res["height"] is not None and "already committed" in reason
    else:  # the refusal is remembered: asking for the transaction later says why it was refused
        st = node.tx_status(bytes.fromhex(res["id"]))
        assert st is not None and st["status"] == "rejected" and st["rule"] == want, st


# --- blocks ------------------------------------------------------------------------------------------

def test_blocks_latest_and_by_height(node: NodeProc, chain: Chain) -> None:
    _, tx, h = committed_record(node, chain)
    latest = node.get_json("/v1/blocks/latest")
    assert latest["header"]["height"] >= h
    block = node.get_json(f"/v1/blocks/{h}")
    assert tx.tx_id.hex() in block["txs"]
    header = Header.from_json(block["header"])
    assert header.height == h and header.chain == "api-test" and header.hash.hex() == block["hash"]
    cert = CommitCertificate.from_json(block["cert"])
    assert cert.height == h and cert.block == header.hash
    cert.verify(chain.chain_id, chain.genesis.validators)  # raises unless properly signed
    if h > 1:
        last = CommitCertificate.from_json(block["last_cert"])
        assert last.height == h - 1 and last.block.hex() == node.get_json(f"/v1/blocks/{h - 1}")["hash"]
        assert header.prev == last.block
    first = node.get_json("/v1/blocks/1")
    assert first["last_cert"] is None and first["header"]["height"] == 1
    assert Header.from_json(first["header"]).prev == chain.genesis.hash


# --- records, issuers, authorities -------------------------------------------------------------------

def test_record_by_id_and_by_issuer_and_holder(node: NodeProc, chain: Chain) -> None:
    holder = KeyPair.generate().did
    docs = []
    for _ in range(3):
        doc, tx, h = committed_record(node, chain, holder=holder)
        docs.append(doc)
    rec = node.get_json(f"/v1/records/{doc.record_id.hex()}")
    assert rec["record_id"] == doc.record_id.hex() and rec["issuer"] == chain.issuer.did
    assert rec["issuer_name"] == "Genesis University" and rec["holder"] == holder and rec["type"] == "degree"
    assert rec["commitment"] == doc.commitment.hex() and rec["standing"] == "accredited"
    assert rec["anchored"] == h and rec["tx"] == tx.tx_id.hex() and rec["status"] == "active"
    assert rec["revoked"] is None and rec["endorsements"] == [] and rec["signer"] == chain.issuer.did

    by_holder = node.get_json(f"/v1/records?holder={holder}")["records"]
    assert sorted(r["record_id"] for r in by_holder) == sorted(d.record_id.hex() for d in docs)
    by_issuer = node.get_json(f"/v1/records?issuer={chain.issuer.did}&limit=1000")["records"]
    assert {d.record_id.hex() for d in docs} <= {r["record_id"] for r in by_issuer}
    # paging: limit and after
    page1 = node.get_json(f"/v1/records?holder={holder}&limit=2")["records"]
    assert len(page1) == 2
    page2 = node.get_json(f"/v1/records?holder={holder}&limit=2&after={page1[-1]['record_id']}")["records"]
    assert [r["record_id"] for r in page1 + page2] == [r["record_id"] for r in by_holder]
    assert node.get_json(f"/v1/records?holder={KeyPair.generate().did}")["records"] == []


def test_endorsement_and_revocation_show_on_the_record(node: NodeProc, chain: Chain) -> None:
    doc, _, _ = committed_record(node, chain)
    endorser = KeyPair.generate()
    node.commit([sign_tx(endorser, chain.chain_id, RecordEndorse(record=doc.record_id, digest=b"\x07" * 32))])
    [_res] = node.commit([sign_tx(chain.issuer, chain.chain_id,
                                  RecordRevoke(record=doc.record_id, reason="issued in error"))])
    rec = node.get_json(f"/v1/records/{doc.record_id.hex()}")
    assert rec["status"] == "revoked"
    assert rec["revoked"] == {"height": _res["height"], "reason": "issued in error"}
    assert rec["endorsements"][0]["endorser"] == endorser.did
    assert rec["endorsements"][0]["digest"] == "07" * 32


def test_issuers_list_and_one(node: NodeProc, chain: Chain) -> None:
    newcomer = KeyPair.generate()
    action = Action(kind="accredit", subject=newcomer.did, name="Newcomer College", scopes=("course",),
                    until=None)
    node.commit([sign_tx(chain.authority, chain.chain_id, GovVote(action=action))])
    listed = {i["did"]: i for i in node.get_json("/v1/issuers")["issuers"]}
    assert listed[chain.issuer.did]["name"] == "Genesis University"
    assert listed[chain.issuer.did]["scopes"] == ["degree"]
    assert listed[newcomer.did]["status"] == "active"
    one = node.get_json(f"/v1/issuers/{newcomer.did}")
    assert one["name"] == "Newcomer College" and one["scopes"] == ["course"]
    assert one["keys"] == [{"did": newcomer.did, "since": one["accredited"]}]


def test_authorities_of_a_single_authority_chain(node: NodeProc, chain: Chain) -> None:
    auth = node.get_json("/v1/authorities")
    assert auth["authorities"] == [{"did": chain.authority.did, "name": "Test Authority"}]
    assert auth["validators"] == [chain.authority.did]
    assert auth["proposals"] == []


def test_authorities_with_an_open_proposal(tmp_path: Path) -> None:
    """A second authority joins (one vote of one executes); from then a vote of one of two stays open.

    Its own node: once the second authority is a validator (two blocks later) this node alone can no
    longer commit blocks, which would stop the shared node of the other tests.
    """
    chain = make_chain(tmp_path, chain_id="gov-test")
    node = NodeProc(init_node(chain, tmp_path / "node")).start()
    try:
        second = KeyPair.generate()
        add = Action(kind="add_authority", subject=second.did, name="Second Body", scopes=(), until=None)
        [res] = node.commit([sign_tx(chain.authority, chain.chain_id, GovVote(action=add))])
        assert res["height"] == 1
        candidate = KeyPair.generate()
        accredit = Action(kind="accredit", subject=candidate.did, name="Pending Uni", scopes=("degree",),
                          until=None)
        [res] = node.commit([sign_tx(chain.authority, chain.chain_id, GovVote(action=accredit))])
        assert res["height"] == 2  # still the genesis validator set at height 2
        auth = node.get_json("/v1/authorities")
        assert sorted(a["did"] for a in auth["authorities"]) == sorted([chain.authority.did, second.did])
        assert sorted(auth["validators"]) == sorted([chain.authority.did, second.did])  # from height 3
        assert auth["proposals"] == [{"action": accredit.to_json(), "votes": [chain.authority.did],
                                      "opened": 2}]
        r = node.get(f"/v1/issuers/{candidate.did}")
        assert r.status == 404  # not accredited until a second vote
        assert node.get_json("/v1/status")["producing"] is False
    finally:
        assert node.terminate() == 0, node.log()


# --- bundles and verification --------------------------------------------------------------------------

def test_bundle_for_a_record_verifies_offline(node: NodeProc, chain: Chain, api_doc: dict[str, Any]) -> None:
    doc, _, h = committed_record(node, chain)
    disclosure = doc.disclose(["degree", "field"])
    path, body = f"/v1/records/{doc.record_id.hex()}/bundle", {"disclosure": disclosure.to_json()}
    request_documented(api_doc, "POST", path, body)
    r = node.post_json(path, body)
    assert r.status == 200 and r.content_type == "application/json", r
    documented(api_doc, "POST", path, r)
    result = verify_bundle(r.body, chain.genesis)
    assert result.verdict == "valid", [c for c in result.checks if not c.ok]
    [rep] = result.records
    assert rep.disclosed == {"degree": "BSc", "field": "Logistics"} and rep.hidden == 1
    assert rep.anchored_height == h and rep.issuer == chain.issuer.did and rep.standing == "accredited"
    assert b"2009" not in r.body


def test_stacked_bundle_of_several_records(node: NodeProc, chain: Chain, api_doc: dict[str, Any]) -> None:
    holder = KeyPair.generate().did
    a, _, _ = committed_record(node, chain, holder=holder)
    b, _, _ = committed_record(node, chain, holder=holder, claims={"course": "Forklift safety", "hours": 12})
    body = {"records": [
        {"record_id": a.record_id.hex(), "disclosure": a.disclose(["degree"]).to_json()},
        {"record_id": b.record_id.hex(), "disclosure": b.disclose(["course", "hours"]).to_json()}]}
    request_documented(api_doc, "POST", "/v1/bundles", body)
    r = node.post_json("/v1/bundles", body)
    assert r.status == 200, r
    result = verify_bundle(r.body, chain.genesis)
    assert result.verdict == "valid", [c for c in result.checks if not c.ok]
    assert [rep.disclosed for rep in result.records] == [{"degree": "BSc"},
                                                         {"course": "Forklift safety", "hours": 12}]


def test_a_bundle_no_verifier_would_take_is_refused_with_the_reason(node: NodeProc, chain: Chain) -> None:
    """The node answers 400, not a bundle that verifies as tampered: one record asked for twice, or a
    disclosure whose values are not those the ledger anchored."""
    doc, _, _ = committed_record(node, chain)
    item = {"record_id": doc.record_id.hex(), "disclosure": doc.disclose(["degree"]).to_json()}
    r = node.post_json("/v1/bundles", {"records": [item, item]})
    refused(r, 400)
    assert "asked for twice" in r.json()["error"], r
    altered = _replace_all(doc.disclose(["degree"]).to_json(), "value", "PhD")
    for path, body in ((f"/v1/records/{doc.record_id.hex()}/bundle", {"disclosure": altered}),
                       ("/v1/bundles", {"records": [{"record_id": doc.record_id.hex(), "disclosure": altered}]})):
        r = node.post_json(path, body)
        refused(r, 400)
        assert "does not match what the ledger anchored" in r.json()["error"], r
    assert node.post_json("/v1/bundles", {"records": [item]}).status == 200


def test_json_a_reader_could_read_two_ways_is_refused() -> None:
    from node.api import ApiError, _parse_json

    for raw, says in ((b'{"a": 1, "b": {"c": 2, "c": 3}}', "the key 'c' appears twice"),
                      (b'{"a": NaN}', "NaN is not a JSON number"), (b"[-Infinity]", "-Infinity is not"),
                      (b"[1e400]", "the number 1e400 is too large"),
                      (b'{"n": -' + b"9" * 5000 + b"}", "an integer of 5000 digits is too long (at most 4300)")):
        with pytest.raises(ApiError, match=re.escape(says)):
            _parse_json(raw)
    assert _parse_json(b"[" + b"9" * 4300 + b"]") == [int("9" * 4300)]
    assert _parse_json(b'{"a": [1.5, -0.0, 1e300], "b": {"a": null}}') == {"a": [1.5, -0.0, 1e300],
                                                                           "b": {"a": None}}


def test_verify_route(node: NodeProc, chain: Chain) -> None:
    doc, _, _ = committed_record(node, chain)
    bundle = node.post_json(f"/v1/records/{doc.record_id.hex()}/bundle",
                            {"disclosure": doc.disclose(["degree"]).to_json()}).body
    r = node.request("POST", "/v1/verify", bundle, "application/json")
    assert r.status == 200, r
    assert r.json()["verdict"] == "valid" and r.json()["valid"] is True and r.json()["checks"]

    node.commit([sign_tx(chain.issuer, chain.chain_id, RecordRevoke(record=doc.record_id, reason="fraud"))])
    bundle = node.post_json(f"/v1/records/{doc.record_id.hex()}/bundle",
                            {"disclosure": doc.disclose(["degree"]).to_json()}).body
    out = node.request("POST", "/v1/verify", bundle, "application/json").json()
    assert out["verdict"] == "revoked" and out["records"][0]["revoked"]["reason"] == "fraud"

    # one flipped byte of a good bundle: tampered, not an error
    flipped = bytearray(bundle)
    flipped[len(flipped) // 2] ^= 0x01
    out = node.request("POST", "/v1/verify", bytes(flipped), "application/json")
    assert out.status == 200 and out.json()["verdict"] != "valid"


@pytest.mark.parametrize("garbage", [b"garbage", b"\xff\xfe\x00", b"[]", b"{}", b'{"format": "ler-bundle/1"}',
                                     b"[" * 5000, b'"' + b"a" * 1000, b"1" * 5000])
def test_verify_garbage_is_tampered(node: NodeProc, garbage: bytes) -> None:
    r = node.request("POST", "/v1/verify", garbage, "application/json")
    assert r.status == 200, r
    assert r.json()["verdict"] == "tampered" and r.json()["valid"] is False


def exported_credential(node: NodeProc, chain: Chain, folder: Path) -> dict[str, Any]:
    """A committed record exported with `ler export` (signed by the issuer's key): the credential."""
    doc, _, _ = committed_record(node, chain)
    doc.save(folder / "record.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    r = subprocess.run([str(LER), "export", "--node", node.url, "--record", "record.json", "--reveal",
                        "degree,field", "--key", str(chain.root / "issuer.key"), "--out", "cred.json"],
                       cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dict(json.loads((folder / "cred.json").read_text()))


def test_verify_route_takes_a_credential(node: NodeProc, chain: Chain, tmp_path: Path) -> None:
    cred = exported_credential(node, chain, tmp_path)
    r = node.request("POST", "/v1/verify", json.dumps(cred, indent=2).encode(), "application/json")
    assert r.status == 200, r
    out = r.json()
    assert out["kind"] == "credential" and out["valid"] is True, out["checks"]
    assert out["parts"] == {"signature": "valid", "issuer_key": "valid", "validity_period": "valid",
                            "ledger_anchor": "valid"}
    assert out["ledger"]["verdict"] == "valid" and out["ledger"]["records"][0]["disclosed"] == {
        "degree": "BSc", "field": "Logistics"}
    assert out["issuer"] == chain.issuer.did and out["claims"] == {"degree": "BSc", "field": "Logistics"}

    # a claim changed after signing: the signature fails, and the credential no longer says what the ledger proves
    cred["credentialSubject"]["ler:claims"]["degree"] = "MSc"
    out = node.request("POST", "/v1/verify", json.dumps(cred).encode(), "application/json").json()
    assert out["kind"] == "credential" and out["valid"] is False
    assert out["parts"]["signature"] == "invalid" and out["parts"]["ledger_anchor"] == "mismatch"
    assert out["ledger"]["verdict"] == "valid"  # the embedded bundle itself is untouched
    assert any(c["check"] == "signature" and not c["pass"] for c in out["checks"])

    # without its bundle: signature and issuer key still checked; the node judges against its own genesis,
    # so a credential with no ledger proof is not anchored, and not valid, whatever its signature
    del cred["ler:proofBundle"]
    out = node.request("POST", "/v1/verify", json.dumps(cred).encode(), "application/json").json()
    assert out["kind"] == "credential" and out["ledger"] is None
    assert out["parts"]["ledger_anchor"] == "not anchored" and out["valid"] is False
    assert out["parts"]["signature"] == "invalid"


@pytest.mark.parametrize("body", [b'{"@context": 1}', b'{"type": "VerifiableCredential"}',
                                  b'{"proof": [{"cryptosuite": null}]}', b'{"@context": [' * 3000])
def test_verify_route_judges_anything_credential_shaped(node: NodeProc, body: bytes) -> None:
    r = node.request("POST", "/v1/verify", body, "application/json")
    assert r.status == 200, r
    out = r.json()
    assert out["valid"] is False
    if body.endswith(b"}"):
        assert out["kind"] == "credential" and out["parts"]["signature"] == "invalid"
    else:  # not JSON at all: judged as a bundle
        assert out["verdict"] == "tampered"


# --- bad input -----------------------------------------------------------------------------------------

def _msgpack_unsorted() -> bytes:
    return msgpack.packb({"txs": [], "a": 1}, use_bin_type=True)


def _noncanonical_tx(chain_id: str) -> bytes:
    """A valid, signed transaction re-encoded with its map keys in reverse order."""
    tx = sign_tx(KeyPair.generate(), chain_id, RecordEndorse(record=os.urandom(16), digest=None))
    obj = tx.to_obj()
    return msgpack.packb(dict(reversed(list(obj.items()))), use_bin_type=True)


def _replace_all(obj: Any, key: str, value: Any) -> Any:
    """`obj` with every map entry named `key`, at any depth, set to `value`."""
    if isinstance(obj, dict):
        return {k: value if k == key else _replace_all(v, key, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_all(v, key, value) for v in obj]
    return obj


def _disclosure_body(disclosure: Any) -> bytes:
    return json.dumps({"disclosure": disclosure}).encode()


# A well-formed disclosure (of a record that is on no ledger), and malformed ones derived from it.
GOOD_DISCLOSURE: dict[str, Any] = RecordDocument(
    chain_id="api-test", record_id=bytes(16), issuer=KeyPair.generate().did, holder=KeyPair.generate().did,
    rtype="degree", expires=None, claims=make_claims(CLAIMS)).disclose(["degree"]).to_json()

J, M = "application/json", "application/msgpack"
TX = "/v1/txs"
RID = "00" * 16
BAD_INPUT: list[tuple[str, str, str, bytes | None, str | None, int]] = [
    # id, method, path, body, content type, status
    ("malformed json", "POST", TX, b"{not json", J, 400),
    ("not utf-8", "POST", TX, b'{"txs": ["\xff"]}', J, 400),
    ("huge integer", "POST", TX, b"1" * 5000, J, 400),
    ("deep nesting", "POST", TX, b"[" * 5000 + b"]" * 5000, J, 400),
    ("empty json body", "POST", TX, b"", J, 400),
    ("empty msgpack body", "POST", TX, b"", M, 400),
    ("json array", "POST", TX, b"[]", J, 400),
    ("json array of txs", "POST", TX, b'[{"type": "record.revoke"}]', J, 400),
    ("txs with another field", "POST", TX, b'{"txs": [{"type": "record.revoke"}], "wait": true}', J, 400),
    ("json number", "POST", TX, b"42", J, 400),
    ("empty txs", "POST", TX, b'{"txs": []}', J, 400),
    ("txs not a list", "POST", TX, b'{"txs": "abc"}', J, 400),
    ("txs of the wrong type", "POST", TX, b'{"txs": [1, "a", null, [], {}]}', J, 400),
    ("tx missing fields", "POST", TX, b'{"type": "record.anchor", "chain": "api-test"}', J, 400),
    ("tx with extra keys", "POST", TX, b'{"txs": [{"type": "record.revoke", "x": 1}], "more": 2}', J, 400),
    ("tx float nonce", "POST", TX, b'{"type": "record.revoke", "chain": "api-test", "nonce": 1.5, "sig": "00",'
                                   b' "signer": "did:key:z6Mkf5rGMoatrSj1f4CyvuHBeXJELe9RPdzo2PKGNCKVtZxP",'
                                   b' "body": {"record": "00", "reason": "x"}}', J, 400),
    ("malformed msgpack", "POST", TX, b"\xc1\xc1", M, 400),
    ("msgpack trailing bytes", "POST", TX, codec.encode([b"x"]) + b"\x00", M, 400),
    ("msgpack unsorted keys", "POST", TX, _msgpack_unsorted(), M, 400),
    ("msgpack not an array", "POST", TX, codec.encode({"txs": [b"x"]}), M, 400),
    ("msgpack empty array", "POST", TX, codec.encode([]), M, 400),
    ("msgpack items not bytes", "POST", TX, codec.encode([1, "tx", [b"x"], {"a": b"b"}, None]), M, 400),
    ("msgpack item garbage bytes", "POST", TX, codec.encode([b"\x00\x01\x02", b""]), M, 400),
    ("msgpack item non-canonical tx", "POST", TX, codec.encode([_noncanonical_tx("api-test")]), M, 400),
    ("msgpack item too large", "POST", TX, codec.encode([b"\x90" * 5000]), M, 400),
    ("unsupported content type", "POST", TX, b"hello", "text/plain", 415),
    ("form content type", "POST", TX, b"a=b", "application/x-www-form-urlencoded", 415),
    ("bad wait timeout", "POST", TX + "?wait=1&timeout=soon", b'{"txs": []}', J, 400),
    ("negative wait timeout", "POST", TX + "?wait=1&timeout=-1", b'{"txs": []}', J, 400),
    ("tx id not hex", "GET", "/v1/txs/xyz", None, None, 400),
    ("tx id short", "GET", "/v1/txs/" + "ab" * 31, None, None, 400),
    ("tx id upper case", "GET", "/v1/txs/" + "AB" * 32, None, None, 400),
    ("tx unknown", "GET", "/v1/txs/" + "ab" * 32, None, None, 404),
    ("height not a number", "GET", "/v1/blocks/abc", None, None, 400),
    ("height negative", "GET", "/v1/blocks/-1", None, None, 400),
    ("height fraction", "GET", "/v1/blocks/1.5", None, None, 400),
    ("height too long", "GET", "/v1/blocks/" + "9" * 19, None, None, 400),
    ("height superscript digit", "GET", "/v1/blocks/%C2%B2", None, None, 400),
    ("height non-ASCII digit", "GET", "/v1/blocks/%D9%A1", None, None, 400),
    ("height zero", "GET", "/v1/blocks/0", None, None, 404),
    ("height in the future", "GET", "/v1/blocks/99999999", None, None, 404),
    ("record id not hex", "GET", "/v1/records/not-hex", None, None, 400),
    ("record id wrong size", "GET", "/v1/records/" + "00" * 32, None, None, 400),
    ("record unknown", "GET", "/v1/records/" + RID, None, None, 404),
    ("records without filter", "GET", "/v1/records", None, None, 400),
    ("records with both filters", "GET", "/v1/records?issuer={did}&holder={did}", None, None, 400),
    ("records bad did", "GET", "/v1/records?issuer=did:key:zNope", None, None, 400),
    ("records not a did", "GET", "/v1/records?holder=alice", None, None, 400),
    ("records bad limit", "GET", "/v1/records?holder={did}&limit=0", None, None, 400),
    ("records limit not a number", "GET", "/v1/records?holder={did}&limit=many", None, None, 400),
    ("records non-ASCII limit", "GET", "/v1/records?holder={did}&limit=%D9%A1", None, None, 400),
    ("records bad after", "GET", "/v1/records?holder={did}&after=zz", None, None, 400),
    ("records unknown after", "GET", "/v1/records?holder={did}&after=" + RID, None, None, 400),
    ("issuer bad did", "GET", "/v1/issuers/did:key:z6MkNotAKey", None, None, 400),
    ("issuer not a did", "GET", "/v1/issuers/bob", None, None, 400),
    ("issuer unknown", "GET", "/v1/issuers/{did}", None, None, 404),
    ("bundle bad record id", "POST", "/v1/records/xyz/bundle", b'{"disclosure": {}}', J, 400),
    ("bundle malformed json", "POST", f"/v1/records/{RID}/bundle", b"{", J, 400),
    ("bundle empty body", "POST", f"/v1/records/{RID}/bundle", b"", J, 400),
    ("bundle wrong shape", "POST", f"/v1/records/{RID}/bundle", b'{"reveal": ["degree"]}', J, 400),
    ("bundle not an object", "POST", f"/v1/records/{RID}/bundle", b"[1, 2]", J, 400),
    ("bundle disclosure not an object", "POST", f"/v1/records/{RID}/bundle", b'{"disclosure": "all"}', J, 400),
    ("bundle disclosure empty", "POST", f"/v1/records/{RID}/bundle", b'{"disclosure": {}}', J, 400),
    ("bundle disclosure unknown field", "POST", f"/v1/records/{RID}/bundle",
     _disclosure_body({**GOOD_DISCLOSURE, "extra": 1}), J, 400),
    ("bundle disclosure field missing", "POST", f"/v1/records/{RID}/bundle",
     _disclosure_body(dict(list(GOOD_DISCLOSURE.items())[1:])), J, 400),
    ("bundle disclosure bad salt", "POST", f"/v1/records/{RID}/bundle",
     _disclosure_body(_replace_all(GOOD_DISCLOSURE, "salt", "zz")), J, 400),
    ("bundle disclosure float value", "POST", f"/v1/records/{RID}/bundle",
     _disclosure_body(_replace_all(GOOD_DISCLOSURE, "value", 1.5)), J, 400),
    ("bundle disclosure key not a string", "POST", f"/v1/records/{RID}/bundle",
     _disclosure_body(_replace_all(GOOD_DISCLOSURE, "key", 7)), J, 400),
    ("bundle unknown record", "POST", f"/v1/records/{RID}/bundle", _disclosure_body(GOOD_DISCLOSURE), J, 404),
    ("bundles not an object", "POST", "/v1/bundles", b"[]", J, 400),
    ("bundles no records", "POST", "/v1/bundles", b'{"records": []}', J, 400),
    ("bundles record not an object", "POST", "/v1/bundles", b'{"records": [1]}', J, 400),
    ("bundles bad record id", "POST", "/v1/bundles",
     json.dumps({"records": [{"record_id": "x", "disclosure": GOOD_DISCLOSURE}]}).encode(), J, 400),
    ("bundles bad disclosure", "POST", "/v1/bundles",
     json.dumps({"records": [{"record_id": RID, "disclosure": {}}]}).encode(), J, 400),
    ("bundles too many", "POST", "/v1/bundles", json.dumps({"records": [
        {"record_id": RID, "disclosure": GOOD_DISCLOSURE}] * 65}).encode(), J, 400),
    ("bundles unknown record", "POST", "/v1/bundles",
     json.dumps({"records": [{"record_id": RID, "disclosure": GOOD_DISCLOSURE}]}).encode(), J, 404),
    ("verify empty body", "POST", "/v1/verify", b"", J, 400),
    ("no such route", "GET", "/v1/nothing-here", None, None, 404),
    ("wrong method", "GET", "/v1/txs", None, None, 405),
    ("wrong method on verify", "DELETE", "/v1/verify", None, None, 405),
]


@pytest.mark.parametrize("method, path, body, ctype, status", [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_4xx_with_a_reason(node: NodeProc, chain: Chain, api_doc: dict[str, Any], method: str,
                                          path: str, body: bytes | None, ctype: str | None, status: int) -> None:
    before = node.get_json("/v1/status")["mempool"]["txs"]
    path = path.format(did=KeyPair.generate().did)
    r = node.request(method, path, body, ctype)
    refused(r, status)
    documented(api_doc, method, path, r)
    assert node.get("/health").status == 200
    if method == "POST" and path.startswith(TX):
        # Nothing of a refused submission was taken.
        assert node.get_json("/v1/status")["mempool"]["txs"] <= before


def test_a_method_a_path_does_not_take_is_405_naming_those_it_does(node: NodeProc) -> None:
    for method, path, allowed in (("TRACE", "/health", {"GET", "HEAD"}), ("GET", "/v1/txs", {"POST"}),
                                  ("DELETE", "/v1/verify", {"POST"}), ("PUT", "/v1/records/" + RID, {"GET", "HEAD"})):
        r = node.request(method, path)
        refused(r, 405)
        assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed, (method, path, r.headers)


def test_requests_that_are_not_http_are_4xx_and_one_log_line_a_minute(node: NodeProc) -> None:
    host, _, port = node.url.removeprefix("http://").partition(":")
    for raw, status, says in 3 * (
            (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Probe: a\x00b\r\n\r\n", 400, "not a request this node can read: "),
            (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431,
             "a header is longer than 8190 bytes"),
            (b"GET /v1/records/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
             "the request line (its URL) is longer than 16384 bytes")):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(raw)
            answer = b""
            while chunk := conn.recv(4096):  # the node closes the connection after it
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] %d " % status, head), (raw[:60], answer)
        assert b"content-type: application/json" in head.lower(), answer  # as every other refusal
        assert json.loads(body)["error"].startswith(says), answer
    # A long URL within the limit is read as any other: here, a record id that is not one.
    r = node.get("/v1/records/" + "a" * 12_000)
    assert r.status == 400 and "record id" in json.loads(r.body)["error"], r.body[:300]
    assert node.get("/health").status == 200
    log = node.log()
    # One line for the nine (a client sending nothing else must not fill the disk), saying what was wrong.
    assert log.count("event=bad_http_request") == 1 and "Traceback" not in log, log[-3000:]
    assert "event=bad_http_request count=1 " in log and "reason=" in log, log[-3000:]


async def test_a_database_failure_is_a_503_with_its_reason_not_an_internal_error() -> None:
    """The store's errors (a full disk, a damaged file) reach a client as 503 with the store's words."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from node.api import error_middleware
    from storage.chain import StoreError

    async def failing(request: web.Request) -> web.Response:
        raise StoreError("the database in /data/db could not be written: IO error: No space left on device")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/txs", failing)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        r = await client.post("/v1/txs", data=b"{}")
        assert r.status == 503
        assert (await r.json())["error"] == ("this node cannot serve the request now: the database in /data/db "
                                             "could not be written: IO error: No space left on device")


def test_a_refused_query_parameter_accepts_nothing(node: NodeProc, chain: Chain) -> None:
    _, tx = anchor(chain)
    r = node.request("POST", "/v1/txs?wait=1&timeout=later", tx_json_body([tx]), J)
    assert "timeout" in refused(r, 400)
    for wait in ("maybe", "", "2", "yes"):  # only 0, 1, true and false, as the API document lists
        r = node.request("POST", f"/v1/txs?wait={wait}", tx_json_body([tx]), J)
        assert "query parameter wait must be 0, 1, true or false" in refused(r, 400), wait
    assert node.tx_status(tx.tx_id) is None  # a 400 means the transaction was not taken


def test_oversize_body_is_413_and_the_node_carries_on(node: NodeProc, chain: Chain) -> None:
    for ctype in (J, M, "text/plain"):
        r = node.request("POST", "/v1/txs", b"x" * (MAX_BODY + 1), ctype)
        assert "too large" in refused(r, 413)
    r = node.request("POST", "/v1/verify", b" " * (4 * MAX_BODY), J)
    refused(r, 413)
    r = node.request("POST", "/v1/bundles", b"{" * (MAX_BODY + 10), J)
    refused(r, 413)
    # a body right at the limit is read (and refused for what it is, not for its size)
    r = node.request("POST", "/v1/txs", b" " * (MAX_BODY - 2) + b"[]", J)
    assert r.status == 400
    assert node.get("/health").status == 200
    node.commit([anchor(chain)[1]])


def test_the_node_still_works_after_all_the_bad_input(node: NodeProc, chain: Chain) -> None:
    h = node.height()
    [res] = node.commit([anchor(chain)[1]])
    assert res["height"] > h
    assert node.height() == res["height"]
    assert node.running()
    # No request ended in a 500 (the node logs each as event=internal_error).
    errors = [ln for ln in node.log(tail=None).splitlines() if "event=internal_error" in ln]
    assert errors == []
