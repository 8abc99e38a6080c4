"""The public HTTP API under /v1 (aiohttp). JSON in and out; msgpack accepted for transaction batches.

Every refusal is a 4xx with {"error": reason}; no input reaches a 500. Bytes are lowercase hex, identities
did:key strings. The OpenAPI document at /v1/openapi.json (node/openapi.py) describes every route.
Operations: /health (200 while the node serves, with its height, sync lag and any warnings) and
/metrics (Prometheus text). The peer endpoints (/peer/v1/...) are node/peers.py's and node/sync.py's,
added to the same application by `make_app` when the node runs its network side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from ler import codec, keys
from ler.bundle import BUNDLE_FORMAT, verify_bundle
from ler.errors import DecodeError, LerError
from ler.record import Disclosure
from ler.state import EndorsementEntry, IssuerEntry, RecordEntry
from ler.tx import MAX_TX_BYTES, RECORD_ID_BYTES, RecordAnchor, Tx
from ler.vc import verify_ler_credential
from ler.wire import hex_bytes
from node import evidence, openapi
from node.listener import BODY_TIMEOUT_KEY, UnreadableBody, expect_within, read_body
from node.service import COMMITTED, PENDING, REJECTED, NodeService, now_ms
from node.verify_page import add_verify_page
from storage.bundles import BundleError, build_bundle, build_status
from storage.chain import StoreError

log = logging.getLogger("ler.api")

VERSION = "0.1.0"
MAX_BATCH = 10_000
JSON_DUMPS = json.dumps
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=JSON_DUMPS)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json({"error": exc.reason}, exc.status)
    except LerError as exc:
        return _json({"error": str(exc)}, 400)
    except UnreadableBody as exc:
        log.debug("event=body_unreadable path=%s reason=%r", request.path, str(exc))
        resp = _json({"error": str(exc)}, 400)
        resp.force_close()
        return resp
    except web.HTTPRequestEntityTooLarge:
        # (aiohttp's exception does not keep the limit as an attribute; the request knows it)
        return _json({"error": f"request body too large (limit {request.client_max_size} bytes)"}, 413)
    except web.HTTPException as exc:
        if exc.status >= 400:
            resp = _json({"error": exc.text if exc.status == 408 else exc.reason or exc.text or "request refused"},
                         exc.status)
            if exc.status == 408:
                resp.force_close()  # the rest of the body may still be on its way
            if "Allow" in exc.headers:  # a 405 names the methods the path takes (RFC 9110, 15.5.6)
                resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        raise
    except StoreError as exc:  # the database failed (a full disk, a damaged file): nothing was taken
        log.error("event=store_error path=%s reason=%r", request.path, exc.reason)
        return _json({"error": f"this node cannot serve the request now: {exc.reason}"}, 503)
    except Exception:  # a bug, never the client's fault; say so without leaking internals
        log.exception("event=internal_error path=%s", request.path)
        return _json({"error": "internal error; the node logged the details"}, 500)


def _credential_or_none(raw: bytes) -> dict[str, Any] | None:
    """The JSON object in `raw` if it looks like a credential (docs/VC.md): it has "@context", or a proof
    with a "cryptosuite", or "VerifiableCredential" among its types. None for anything else (bundles too)."""
    if not raw.lstrip()[:1] == b"{":
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("format") == BUNDLE_FORMAT:
        return None
    proofs = doc.get("proof")
    proofs = proofs if isinstance(proofs, list) else [proofs]
    types = doc.get("type")
    types = types if isinstance(types, list) else [types]
    if "@context" in doc or "VerifiableCredential" in types \
            or any(isinstance(p, dict) and "cryptosuite" in p for p in proofs):
        return doc
    return None


async def _read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    if not raw:
        raise ApiError(400, "empty request body; expected JSON")
    return _parse_json(raw)


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once: which of two values a reader takes differs between
    parsers, so an object that names a key twice is refused rather than read one way here."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(400, f"malformed JSON: the key {key[:100]!r} appears twice in one object")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise ApiError(400, f"malformed JSON: {name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"malformed JSON: the number {text[:40]} is too large")
    return value


def _integer(text: str) -> int:
    limit = sys.get_int_max_str_digits() or 4300  # what int() takes from a string (where that is 0, 4300)
    digits = len(text.lstrip("-"))
    if digits > limit:
        raise ApiError(400, f"malformed JSON: an integer of {digits} digits is too long (at most {limit})")
    return int(text)


def _parse_json(raw: bytes) -> Any:
    """Strict JSON (RFC 8259): no NaN or Infinity, no number too large for a double, no key twice."""
    try:
        return json.loads(raw, object_pairs_hook=_one_of_each, parse_constant=_no_constant, parse_float=_finite,
                          parse_int=_integer)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None


def _hex_id(text: str, size: int, what: str) -> bytes:
    try:
        return hex_bytes(text, size, what)
    except DecodeError as exc:
        raise ApiError(400, str(exc)) from None


#: The largest height a request may name (18 digits, as `_int_param` reads them).
_MAX_HEIGHT = 10**18 - 1


def _json_int(v: Any) -> int | None:
    """A JSON integer, or None. 408.0 counts (JSON has one number type, and JSON Schema calls a number
    with no fraction an integer); true and 408.5 do not."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53:
        return int(v)
    return v if isinstance(v, int) else None


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,18}", raw):  # int() would also take " 1", "1_0" and non-ASCII digits
        raise ApiError(400, f"query parameter {name} must be an integer")
    v = int(raw)
    if not lo <= v <= hi:
        raise ApiError(400, f"query parameter {name} must be between {lo} and {hi}")
    return v


def _flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter: absent is no; anything but 0, 1, true or false is refused (400), as for
    every other parameter, rather than taken as no."""
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("0", "1", "true", "false"):
        raise ApiError(400, f"query parameter {name} must be 0, 1, true or false")
    return raw.lower() in ("1", "true")


# --- JSON views of ledger entries --------------------------------------------------------------------

def issuer_json(e: IssuerEntry) -> dict[str, Any]:
    return {"did": e.did, "name": e.name, "scopes": list(e.scopes), "status": e.status, "until": e.until,
            "accredited": e.accredited, "changed": e.changed,
            "keys": [{"did": keys.did_from_public_key(k.key), "since": k.since} for k in e.keys]}


def endorsement_json(e: EndorsementEntry) -> dict[str, Any]:
    return {"endorser": keys.did_from_public_key(e.endorser), "height": e.height,
            "digest": e.digest.hex() if e.digest else None}


def record_json(svc: NodeService, record_id: bytes, e: RecordEntry) -> dict[str, Any]:
    issuer = svc.store.get_issuer(e.issuer)
    if e.revoked is not None:
        status = "revoked"
    elif e.expires is not None and e.expires < now_ms():
        status = "expired"
    else:
        status = "active"
    return {"record_id": record_id.hex(), "issuer": e.issuer, "issuer_name": issuer.name if issuer else None,
            "holder": e.holder, "type": e.rtype, "commitment": e.commitment.hex(), "standing": e.standing,
            "anchored": e.anchored, "tx": e.tx.hex(), "expires": e.expires,
            "signer": keys.did_from_public_key(e.signer),
            "revoked": {"height": e.revoked.height, "reason": e.revoked.reason} if e.revoked else None,
            "status": status,
            "endorsements": [endorsement_json(x) for x in svc.store.endorsements(record_id)]}


def block_json(svc: NodeService, h: int) -> dict[str, Any]:
    block = svc.store.block(h)
    if block is None:
        raise ApiError(404, f"no block at height {h} (latest is {svc.store.height})")
    cert = svc.store.cert(h)
    ids = [keys.sha256(raw).hex() for raw in block.txs]
    return {"hash": block.hash.hex(), "header": block.header.to_json(), "txs": ids,
            "last_cert": block.last_cert.to_json() if block.last_cert else None,
            "cert": cert.to_json() if cert else None}


# --- handlers ----------------------------------------------------------------------------------------

class NetworkView(Protocol):
    """What the API shows of the network side (node/daemon.py's Node provides it)."""

    @property
    def round(self) -> int: ...

    @property
    def peers_connected(self) -> int: ...

    @property
    def peers_known(self) -> int: ...

    @property
    def syncing(self) -> bool: ...

    @property
    def sync_lag(self) -> int: ...

    @property
    def held_until(self) -> int: ...

    @property
    def voted_in_height(self) -> int | None: ...

    @property
    def own_key_evidence(self) -> int | None: ...


#: What /health says of each warning that names a height.
HEALTH_REASONS = {
    "signing_held": "this authority signs nothing below that height: votes of its key beyond its own record "
                    "came back to it (a restored or copied data folder?); see event=signed_beyond_record in "
                    "its log",
    "evidence_against_own_key": "a peer handed on evidence that this node's key signed two conflicting "
                                "messages at that height: another node signs with this key (a copied data "
                                "folder or node.key?); find it and stop it (see /v1/evidence)",
    "voted_in_but_observer": "this node's key is an authority from that height, but the node runs as an "
                             "observer and does not vote: set role = \"authority\" in its config.toml and "
                             "restart it",
}


class Api:
    def __init__(self, svc: NodeService, net: NetworkView | None = None) -> None:
        self.svc = svc
        self.net = net

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/openapi.json", self.openapi),
            web.get("/v1/status", self.status),
            web.get("/v1/genesis", self.genesis),
            web.post("/v1/txs", self.submit, expect_handler=expect_within()),
            web.get("/v1/txs/{id}", self.tx),
            web.get("/v1/blocks/latest", self.latest_block),
            web.get("/v1/blocks/{height}", self.block),
            web.get("/v1/records", self.records),
            web.get("/v1/records/{id}", self.record),
            web.post("/v1/records/{id}/bundle", self.bundle, expect_handler=expect_within()),
            web.get("/v1/records/{id}/status", self.record_status),
            web.post("/v1/status/records", self.status_proof, expect_handler=expect_within()),
            web.post("/v1/bundles", self.bundles, expect_handler=expect_within()),
            web.post("/v1/verify", self.verify, expect_handler=expect_within()),
            web.get("/v1/issuers", self.issuers),
            web.get("/v1/issuers/{did}", self.issuer),
            web.get("/v1/authorities", self.authorities),
            web.get("/v1/evidence", self.evidence),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
        ]

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi.document(VERSION))

    async def health(self, request: web.Request) -> web.Response:
        """Liveness stays 200 with "ok": true while the node serves (a node that cannot make blocks
        because too few authorities are up is still alive, and restarting it mends nothing); what an
        operator should act on goes in "warnings" ({"event", "reason"}, and "height" where one is meant),
        and "status" is "degraded" while there are any."""
        net, svc = self.net, self.svc
        warnings: list[dict[str, Any]] = []
        stalled = svc.stall_warning()
        if stalled:
            warnings.append({"event": "no_block", "reason": stalled})
        if net is not None:
            at = {"signing_held": net.held_until or None, "evidence_against_own_key": net.own_key_evidence,
                  "voted_in_but_observer": net.voted_in_height}
            warnings += [{"event": event, "height": height, "reason": HEALTH_REASONS[event]}
                         for event, height in at.items() if height is not None]
        return _json({"ok": True, "status": "degraded" if warnings else "ok", "warnings": warnings,
                      "height": svc.store.height, "role": svc.config.role,
                      "syncing": net.syncing if net else False, "sync_lag": net.sync_lag if net else 0,
                      "peers": net.peers_connected if net else 0,
                      "last_block_age_s": round(time.monotonic() - svc.last_block_at, 1)})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.svc.metrics.render().encode("utf-8"),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def gauges(self) -> dict[str, tuple[str, float]]:
        """The live gauges /metrics shows (read when scraped)."""
        s, net = self.svc, self.net
        return {
            "ler_height": ("Last committed block height", s.store.height),
            "ler_round": ("Consensus round of the height in progress (0 between heights)",
                          net.round if net else 0),
            "ler_mempool_txs": ("Transactions waiting in the mempool", len(s.mempool)),
            "ler_mempool_bytes": ("Bytes of transactions waiting in the mempool", s.mempool.bytes),
            "ler_peers_connected": ("Peers whose last request succeeded", net.peers_connected if net else 0),
            "ler_peers_known": ("Peers this node sends to", net.peers_known if net else 0),
            "ler_sync_lag_blocks": ("Blocks the highest height any peer reported is ahead of this node",
                                    net.sync_lag if net else 0),
            "ler_last_block_age_seconds": ("Seconds since this node committed a block (or started)",
                                           round(time.monotonic() - s.last_block_at, 3)),
            "ler_stalled": ("1 while no block comes though transactions wait or a heartbeat is due (see /health)",
                            1 if s.stall_warning() else 0),
            "ler_syncing": ("1 while block sync is fetching", 1 if net and net.syncing else 0),
            "ler_validator": ("1 if this node is a validator of the next height", 1 if s.is_validator else 0),
            "ler_signing_held_until_height": (
                "Height below which this validator signs nothing, having found its key signed beyond its "
                "record (0: no hold)", net.held_until if net else 0),
        }

    async def evidence(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        rows = await asyncio.to_thread(self.svc.store.list_meta, evidence.EVIDENCE_PREFIX, limit,
                                       True)
        out = []
        for key, value in rows:
            try:
                out.append(evidence.to_json(key, value))
            except (LerError, KeyError, TypeError, ValueError) as exc:  # written by this node; say so if unreadable
                log.warning("event=evidence_unreadable key=%s reason=%r", key.hex(), str(exc))
        return _json({"evidence": out})

    async def status(self, request: web.Request) -> web.Response:
        s = self.svc
        head = s.store.latest_header()
        return _json({
            "chain_id": s.chain_id, "genesis_hash": s.genesis.hash.hex(), "height": s.store.height,
            "latest_block": head.hash.hex() if head else None, "latest_time": head.time if head else None,
            "node": s.key.did, "role": s.config.role, "producing": s.is_producer,
            "validator": s.is_validator,
            "round": self.net.round if self.net else 0,
            "syncing": self.net.syncing if self.net else False,
            "peers": {"connected": self.net.peers_connected if self.net else 0,
                      "known": self.net.peers_known if self.net else 0},
            "mempool": {"txs": len(s.mempool), "bytes": s.mempool.bytes}, "version": VERSION})

    async def genesis(self, request: web.Request) -> web.Response:
        return _json(self.svc.genesis.to_json())

    async def submit(self, request: web.Request) -> web.Response:
        ctype = request.content_type
        raw = await read_body(request)
        if not raw:
            raise ApiError(400, "empty request body; expected transactions")
        # Query parameters are checked before anything is accepted: a 400 must mean nothing was taken.
        wait = _flag(request, "wait")
        limit_s = self.svc.config.limits.wait_timeout_s
        timeout = min(float(_int_param(request, "timeout", int(limit_s), 0, 3600)), limit_s)
        if ctype in ("application/msgpack", "application/x-msgpack"):
            decode = _decode_msgpack_batch
        elif ctype in ("application/json", "") or ctype.endswith("+json"):
            decode = _decode_json_batch
        else:
            raise ApiError(415, f"unsupported content type {ctype!r}; use application/json or "
                                "application/msgpack")
        # Decoding a large batch takes a while: off the event loop, which serves consensus meanwhile.
        results = await self.svc.submit_body(decode, raw)
        if wait:
            ids = [r.tx_id for r in results if r.status == PENDING and r.tx_id]
            if ids:
                await self.svc.wait_for(ids, timeout)
            results = [self.svc.status_of(r.tx_id) if r.status == PENDING and r.tx_id else r for r in results]
        body = {"results": [r.to_json() for r in results]}
        if all(r.status == REJECTED for r in results):
            return _json(body, 400)
        if wait and all(r.status in (COMMITTED, REJECTED) for r in results):
            return _json(body, 200)
        return _json(body, 202)

    async def tx(self, request: web.Request) -> web.Response:
        tx_id = _hex_id(request.match_info["id"], 32, "transaction id")
        res = self.svc.status_of(tx_id)
        if res.status == "unknown":
            raise ApiError(404, f"no transaction {tx_id.hex()} is known to this node")
        body = res.to_json()
        tx = self.svc.store.get_tx(tx_id) if res.status == COMMITTED else self.svc.mempool.get(tx_id)
        body["tx"] = tx.to_json() if tx is not None else None
        return _json(body)

    async def latest_block(self, request: web.Request) -> web.Response:
        if self.svc.store.height == 0:
            raise ApiError(404, "no block committed yet")
        return _json(block_json(self.svc, self.svc.store.height))

    async def block(self, request: web.Request) -> web.Response:
        text = request.match_info["height"]
        # ASCII digits only: str.isdigit() also admits "²", which int() then refuses.
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise ApiError(400, "block height must be a positive integer")
        return _json(block_json(self.svc, int(text)))

    async def record(self, request: web.Request) -> web.Response:
        record_id = _hex_id(request.match_info["id"], RECORD_ID_BYTES, "record id")
        entry = self.svc.store.get_record(record_id)
        if entry is None:
            raise ApiError(404, f"no record {record_id.hex()} on the ledger")
        return _json(record_json(self.svc, record_id, entry))

    async def records(self, request: web.Request) -> web.Response:
        issuer, holder = request.query.get("issuer"), request.query.get("holder")
        if (issuer is None) == (holder is None):
            raise ApiError(400, "give exactly one of ?issuer=DID or ?holder=DID")
        did = issuer or holder or ""
        try:
            keys.public_key_from_did(did)
        except DecodeError as exc:
            raise ApiError(400, str(exc)) from None
        limit = _int_param(request, "limit", 100, 1, 1000)
        after_text = request.query.get("after")
        after = _hex_id(after_text, RECORD_ID_BYTES, "after") if after_text else None
        lister = self.svc.store.records_by_issuer if issuer else self.svc.store.records_by_holder

        def page() -> list[dict[str, Any]]:  # up to 1000 records, each a state read: off the event loop
            out = []
            for rid in lister(did, limit, after):
                e = self.svc.store.get_record(rid)
                if e is not None:
                    out.append(record_json(self.svc, rid, e))
            return out

        try:
            records = await asyncio.to_thread(page)
        except ValueError as exc:  # `after` names no record of this issuer or holder
            raise ApiError(400, f"after: {exc}") from None
        return _json({"records": records})

    async def _bundle_for(self, items: list[tuple[bytes, Disclosure]]) -> web.Response:
        seen: set[bytes] = set()
        for record_id, _ in items:
            if record_id in seen:
                raise ApiError(400, f"record {record_id.hex()} is asked for twice (a verifier refuses such a bundle)")
            seen.add(record_id)
        try:
            bundle = await asyncio.to_thread(build_bundle, self.svc.store, items)
        except BundleError as exc:
            raise ApiError(404, str(exc)) from None
        for proof in bundle.records:
            # A disclosure that does not open the record's commitment would give a bundle no verifier takes:
            # refused here, with the reason, rather than handed over.
            body = Tx.decode(proof.anchor.tx).body
            problems = proof.disclosure.verify(body.commitment) if isinstance(body, RecordAnchor) else []
            if problems:
                raise ApiError(400, f"the disclosure of record {proof.record_id.hex()} does not match what the "
                                    f"ledger anchored: {'; '.join(problems)}")
        return web.Response(body=bundle.dumps(), content_type="application/json")

    async def bundle(self, request: web.Request) -> web.Response:
        record_id = _hex_id(request.match_info["id"], RECORD_ID_BYTES, "record id")
        doc = await _read_json(request)
        if not isinstance(doc, dict) or set(doc) != {"disclosure"}:
            raise ApiError(400, 'expected {"disclosure": {...}} (the holder computes it from the record file)')
        return await self._bundle_for([(record_id, Disclosure.from_json(doc["disclosure"]))])

    async def bundles(self, request: web.Request) -> web.Response:
        doc = await _read_json(request)
        recs = doc.get("records") if isinstance(doc, dict) and set(doc) == {"records"} else None
        if not isinstance(recs, list) or not 1 <= len(recs) <= 64:
            raise ApiError(400, 'expected {"records": [{"record_id": hex, "disclosure": {...}}, ...]} (1-64)')
        items = []
        for r in recs:
            if not isinstance(r, dict) or set(r) != {"record_id", "disclosure"}:
                raise ApiError(400, "each record needs record_id and disclosure")
            items.append((_hex_id(r["record_id"], RECORD_ID_BYTES, "record_id"),
                          Disclosure.from_json(r["disclosure"])))
        return await self._bundle_for(items)

    async def _status_for(self, ids: list[bytes], since: int) -> web.Response:
        head = self.svc.store.height
        if since > head:
            raise ApiError(409, f"since: this node's chain ends at height {head}, before the bundle's head {since} "
                                "(it is behind: ask a node that has caught up)")
        try:
            proof = await asyncio.to_thread(build_status, self.svc.store, ids, since)
        except BundleError as exc:
            raise ApiError(404, str(exc)) from None
        return web.Response(body=proof.dumps(), content_type="application/json")

    async def record_status(self, request: web.Request) -> web.Response:
        """A fresh status proof for one record (ler.bundle.StatusProof); ?since=H, the verifier's head height."""
        record_id = _hex_id(request.match_info["id"], RECORD_ID_BYTES, "record id")
        since = _int_param(request, "since", self.svc.store.height, 1, _MAX_HEIGHT)
        return await self._status_for([record_id], since)

    async def status_proof(self, request: web.Request) -> web.Response:
        """A fresh status proof for the records of a (stacked) bundle whose head is block `since`."""
        doc = await _read_json(request)
        recs = doc.get("records") if isinstance(doc, dict) and set(doc) == {"records", "since"} else None
        since = _json_int(doc.get("since")) if isinstance(doc, dict) else None
        if not isinstance(recs, list) or not 1 <= len(recs) <= 64 or since is None:
            raise ApiError(400, 'expected {"records": [record id hex, ...] (1-64), "since": height}')
        if not 1 <= since <= _MAX_HEIGHT:
            raise ApiError(400, f"since must be a height from 1 to {_MAX_HEIGHT}")
        ids = [_hex_id(r, RECORD_ID_BYTES, "record id") for r in recs]
        if len(set(ids)) != len(ids):
            raise ApiError(400, "the same record id appears twice")
        return await self._status_for(ids, since)

    async def verify(self, request: web.Request) -> web.Response:
        """A proof bundle (its VerificationResult), or a W3C VC / Open Badges 3.0 credential (its
        CredentialReport, "kind": "credential"). Anything else is judged as a bundle: tampered."""
        raw = await read_body(request)
        if not raw:
            raise ApiError(400, "empty request body; expected a proof bundle or a credential")
        doc = _credential_or_none(raw)
        if doc is not None:
            try:
                report = await asyncio.to_thread(verify_ler_credential, doc, self.svc.genesis)
                return _json(report.to_json())
            except RecursionError:
                raise ApiError(400, "the credential is nested too deeply to check") from None
        result = await asyncio.to_thread(verify_bundle, raw, self.svc.genesis)
        return _json(result.to_json())

    async def issuers(self, request: web.Request) -> web.Response:
        return _json({"issuers": [issuer_json(e) for e in self.svc.store.list_issuers()]})

    async def issuer(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        try:
            keys.public_key_from_did(did)
        except DecodeError as exc:
            raise ApiError(400, str(exc)) from None
        e = self.svc.store.get_issuer(did)
        if e is None:
            raise ApiError(404, f"{did} is not a registered issuer")
        return _json(issuer_json(e))

    async def authorities(self, request: web.Request) -> web.Response:
        aset = self.svc.store.get_authorities()
        proposals = []
        for p in self.svc.store.proposals():
            proposals.append({"action": p.action.to_json(), "votes": [keys.did_from_public_key(v) for v in p.votes],
                              "opened": p.opened})
        return _json({"authorities": [{"did": keys.did_from_public_key(a.key), "name": a.name}
                                      for a in aset.members],
                      "validators": [keys.did_from_public_key(v)
                                     for v in self.svc.store.validators(self.svc.store.height + 1)],
                      "proposals": proposals})


def _decode_msgpack_batch(raw: bytes) -> list[Tx | LerError]:
    """A msgpack body is a canonical array of transactions, each as its canonical bytes (bin)."""
    try:
        outer = codec.decode(raw)
    except DecodeError as exc:
        raise ApiError(400, f"malformed msgpack batch: {exc}") from None
    if not isinstance(outer, list) or not outer:
        raise ApiError(400, "a msgpack batch is a non-empty array of transactions, each as bin")
    if len(outer) > MAX_BATCH:
        raise ApiError(413, f"at most {MAX_BATCH} transactions per request")
    items: list[Tx | LerError] = []
    for item in outer:
        if not isinstance(item, bytes) or len(item) > MAX_TX_BYTES:
            items.append(DecodeError("each batch item must be a transaction's canonical bytes (bin, "
                                     f"at most {MAX_TX_BYTES} bytes)"))
            continue
        try:
            items.append(Tx.decode(item))
        except LerError as exc:
            items.append(exc)
    return items


def _decode_json_batch(raw: bytes) -> list[Tx | LerError]:
    """A JSON body: {"txs": [transaction, ...]} or one transaction object."""
    doc = _parse_json(raw)
    if isinstance(doc, list):
        raise ApiError(400, 'expected {"txs": [transaction, ...]} or one transaction object, not a JSON array '
                            '(put the array in {"txs": ...})')
    if isinstance(doc, dict) and "txs" in doc and set(doc) != {"txs"}:
        others = ", ".join(sorted(k[:40] for k in doc if k != "txs"))
        raise ApiError(400, f'a batch is {{"txs": [transaction, ...]}} and nothing else; also given: {others}')
    objs = doc.get("txs") if isinstance(doc, dict) and set(doc) == {"txs"} else [doc]
    if not isinstance(objs, list) or not objs:
        raise ApiError(400, 'expected {"txs": [transaction, ...]} or one transaction object')
    if len(objs) > MAX_BATCH:
        raise ApiError(413, f"at most {MAX_BATCH} transactions per request")
    items: list[Tx | LerError] = []
    for obj in objs:
        try:
            items.append(Tx.from_json(obj))
        except LerError as exc:
            items.append(exc)
    return items


def make_app(svc: NodeService, net: NetworkView | None = None,
             peer_routes: list[web.RouteDef] | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=svc.config.limits.max_body_bytes)
    app[BODY_TIMEOUT_KEY] = svc.config.limits.body_timeout_s
    api = Api(svc, net)
    app.add_routes(api.routes())
    add_verify_page(app)
    if peer_routes:
        app.add_routes(peer_routes)
    svc.metrics.gauges = api.gauges
    app["api"] = api
    return app

