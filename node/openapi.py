"""The OpenAPI 3.1 document the node serves at /v1/openapi.json (kept next to the routes in node/api.py)."""

from __future__ import annotations

from typing import Any

HEX32 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
HEX16 = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
#: An Ed25519 did:key ("z" and the base58btc of 0xed01 and the 32-byte key: always 48 characters). The
#: pattern cannot bound the number the base58 digits spell: the node refuses one outside the key range (400).
DID = {"type": "string", "pattern": "^did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{44}$"}
ERROR = {"$ref": "#/components/schemas/Error"}
HEIGHT = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}  # a height, as the node reads one (18 digits)


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    body["content"] = {"application/json": {"schema": schema or {"type": "object"}}}
    return body


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request (reason in error)", 404: "Not found",
            409: "This node has not reached the height asked about (it is behind)", 413: "Payload too large",
            415: "Unsupported content type"}
    return {str(c): _resp(text[c], ERROR) for c in codes}


def _param(name: str, where: str, schema: dict[str, Any], required: bool, description: str) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


def document(version: str) -> dict[str, Any]:
    tx_schema = {"$ref": "#/components/schemas/Transaction"}
    results = {"$ref": "#/components/schemas/SubmitResults"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "LER Ledger node API", "version": version,
                 "description": "Submit signed learning and employment record transactions, read blocks, "
                                "records and issuers, and get or check proof bundles. Errors are 4xx JSON "
                                "objects with a reason (on any path, 414 for a request line over 16,384 "
                                "bytes and 431 for a header over 8,190); 503 (with a reason) when the "
                                "node's database cannot serve the request (a full disk)."},
        "paths": {
            "/v1/status": {"get": {"summary": "Node and chain status", "operationId": "status",
                                   "responses": {"200": _resp("Status")}}},
            "/v1/genesis": {"get": {"summary": "The genesis document this node runs", "operationId": "genesis",
                                    "responses": {"200": _resp("Genesis")}}},
            "/v1/txs": {"post": {
                "summary": "Submit one transaction or a batch",
                "operationId": "submitTxs",
                "parameters": [
                    _param("wait", "query", {"type": "string", "enum": ["0", "1", "true", "false"]}, False,
                           "Wait until the transactions are committed or refused"),
                    _param("timeout", "query", {"type": "integer", "minimum": 0, "maximum": 3600}, False,
                           "Longest wait in seconds (capped by the node's setting)")],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"oneOf": [
                        {"type": "object", "required": ["txs"], "additionalProperties": False,
                         "properties": {"txs": {"type": "array", "items": tx_schema, "minItems": 1,
                                                "maxItems": 10000}}},
                        tx_schema]}},
                    "application/msgpack": {"schema": {"type": "string", "format": "binary",
                                                       "description": "Canonical msgpack array of "
                                                                      "transactions, each as bin"}}}},
                "responses": {"200": _resp("All settled (with wait)", results),
                              "202": _resp("Accepted, pending", results),
                              "400": _resp("Every transaction refused (one result each, with its rule and "
                                           "error), or the request itself malformed (error)",
                                           {"oneOf": [results, ERROR]}),
                              **_errors(413, 415)}}},
            "/v1/txs/{id}": {"get": {
                "summary": "A transaction's status", "operationId": "getTx",
                "parameters": [_param("id", "path", HEX32, True, "Transaction id")],
                "responses": {"200": _resp("Status"), **_errors(400, 404)}}},
            "/v1/blocks/latest": {"get": {"summary": "The latest committed block", "operationId": "latestBlock",
                                          "responses": {"200": _resp("Block"), **_errors(404)}}},
            "/v1/blocks/{height}": {"get": {
                "summary": "A committed block", "operationId": "getBlock",
                "parameters": [_param("height", "path", HEIGHT, True, "Height")],
                "responses": {"200": _resp("Block"), **_errors(400, 404)}}},
            "/v1/records": {"get": {
                "summary": "Records by issuer or by holder", "operationId": "listRecords",
                "description": "Give exactly one of issuer and holder (400 otherwise).",
                "parameters": [_param("issuer", "query", DID, False, "Issuer did"),
                               _param("holder", "query", DID, False, "Holder did"),
                               _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000},
                                      False, "Most records to return"),
                               _param("after", "query", HEX16, False, "Continue after this record id")],
                "responses": {"200": _resp("Records"), **_errors(400)}}},
            "/v1/records/{id}": {"get": {
                "summary": "A record's ledger entry and status", "operationId": "getRecord",
                "parameters": [_param("id", "path", HEX16, True, "Record id")],
                "responses": {"200": _resp("Record"), **_errors(400, 404)}}},
            "/v1/records/{id}/bundle": {"post": {
                "summary": "A proof bundle for a record with the holder's chosen disclosure",
                "operationId": "recordBundle",
                "parameters": [_param("id", "path", HEX16, True, "Record id")],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["disclosure"], "additionalProperties": False,
                    "properties": {"disclosure": {"$ref": "#/components/schemas/Disclosure"}}}}}},
                "responses": {"200": _resp("Proof bundle"), **_errors(400, 404)}}},
            "/v1/records/{id}/status": {"get": {
                "summary": "A fresh status proof for a record (ler-status/1): the latest committed head with its "
                           "certificate, validator transitions and genesis path, the record's and its issuer's "
                           "state proofs there, the anchoring block's history path, and a consistency proof "
                           "from block `since`; verifiers check all of it and trust nothing (ler verify --refresh)",
                "operationId": "recordStatus",
                "parameters": [_param("id", "path", HEX16, True, "Record id"),
                               _param("since", "query", HEIGHT, False,
                                      "The head height of the bundle being refreshed (default: the latest)")],
                "responses": {"200": _resp("Status proof"), **_errors(400, 404, 409)}}},
            "/v1/status/records": {"post": {
                "summary": "A fresh status proof for the records of a (stacked) bundle whose head is block `since`",
                "operationId": "statusProof",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["records", "since"], "additionalProperties": False,
                    "properties": {"records": {"type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": True,
                                               "items": HEX16},
                                   "since": HEIGHT}}}}},
                "responses": {"200": _resp("Status proof"), **_errors(400, 404, 409)}}},
            "/v1/bundles": {"post": {
                "summary": "One proof bundle stacking several records", "operationId": "stackBundle",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["records"], "additionalProperties": False,
                    "properties": {"records": {"type": "array", "minItems": 1, "maxItems": 64, "items": {
                        "type": "object", "required": ["record_id", "disclosure"],
                        "additionalProperties": False,
                        "properties": {"record_id": HEX16,
                                       "disclosure": {"$ref": "#/components/schemas/Disclosure"}}}}}}}}},
                "responses": {"200": _resp("Proof bundle"), **_errors(400, 404)}}},
            "/v1/verify": {"post": {
                "summary": "Verify a proof bundle or a credential against this node's genesis (verifiers can do "
                           "this offline)",
                "description": "The body is a proof bundle (ler-bundle/1) or a W3C VC 2.0 / Open Badges 3.0 "
                               "credential (docs/VC.md). A bundle answers its verification result (verdict, "
                               "records, checks). A JSON object with \"@context\", a proof with a "
                               "\"cryptosuite\", or \"VerifiableCredential\" among its types is a credential: "
                               "the answer is its report, {\"kind\": \"credential\", \"valid\", \"parts\": "
                               "{signature, issuer_key, validity_period, ledger_anchor}, \"ledger\" (the "
                               "embedded bundle's verification result, or null), \"checks\"} (ler verify FILE "
                               "--genesis). Anything else is judged as a bundle: verdict tampered.",
                "operationId": "verifyBundle",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "description": "Any JSON: what is neither a bundle nor a credential gets the verdict "
                                   "tampered"}}}},
                "responses": {"200": _resp("Verification result with verdict and checks"), **_errors(400, 413)}}},
            "/v1/issuers": {"get": {"summary": "The issuer registry", "operationId": "listIssuers",
                                    "responses": {"200": _resp("Issuers")}}},
            "/v1/issuers/{did}": {"get": {
                "summary": "One issuer's accreditation", "operationId": "getIssuer",
                "parameters": [_param("did", "path", DID, True, "Issuer did")],
                "responses": {"200": _resp("Issuer"), **_errors(400, 404)}}},
            "/v1/authorities": {"get": {"summary": "Authorities, validators and open proposals",
                                        "operationId": "authorities",
                                        "responses": {"200": _resp("Authorities")}}},
            "/v1/evidence": {"get": {
                "summary": "Evidence of equivocation this node has seen (two conflicting signed votes or "
                           "proposals by one validator), highest height first, and within a height "
                           "highest round first", "operationId": "evidence",
                "parameters": [_param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000},
                                      False, "Most entries to return")],
                "responses": {"200": _resp("Evidence", {
                    "type": "object", "required": ["evidence"], "properties": {"evidence": {
                        "type": "array", "items": {"type": "object", "properties": {
                            "kind": {"type": "string", "enum": ["duplicate_vote", "duplicate_proposal"]},
                            "height": {"type": "integer"}, "round": {"type": "integer"},
                            "step": {"type": "string"}, "validator": DID,
                            "messages": {"type": "array", "minItems": 2, "maxItems": 2,
                                         "items": {"type": "object"}}}}}}}),
                              **_errors(400)}}},
            "/health": {"get": {"summary": "Liveness: 200 while the node serves, with its height, whether "
                                           "it is catching up by block sync, and warnings (status degraded) "
                                           "such as no block while transactions wait", "operationId": "health",
                                "responses": {"200": _resp("Alive", {
                                    "type": "object", "required": ["ok", "status", "warnings", "height", "syncing"],
                                    "properties": {"ok": {"type": "boolean"},
                                                   "status": {"type": "string", "enum": ["ok", "degraded"]},
                                                   "warnings": {"type": "array", "items": {
                                                       "type": "object", "required": ["event", "reason"],
                                                       "properties": {"event": {"type": "string"},
                                                                      "height": {"type": "integer"},
                                                                      "reason": {"type": "string"}}}},
                                                   "height": {"type": "integer"},
                                                   "role": {"type": "string"}, "syncing": {"type": "boolean"},
                                                   "sync_lag": {"type": "integer"},
                                                   "peers": {"type": "integer"},
                                                   "last_block_age_s": {"type": "number"}}})}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format 0.0.4)",
                                 "operationId": "metrics",
                                 "responses": {"200": {"description": "Metrics", "content": {
                                     "text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                         "responses": {"200": _resp("OpenAPI 3.1 document")}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Transaction": {
                "type": "object", "required": ["chain", "type", "signer", "nonce", "body", "sig"],
                "properties": {
                    "id": HEX32, "chain": {"type": "string"},
                    "type": {"type": "string", "enum": ["gov.vote", "issuer.rotate", "record.anchor",
                                                        "record.revoke", "record.endorse"]},
                    "signer": DID, "nonce": {"type": "integer", "minimum": 0},
                    "body": {"type": "object"}, "sig": {"type": "string", "pattern": "^[0-9a-f]{128}$"}}},
            "SubmitResults": {"type": "object", "required": ["results"], "additionalProperties": False,
                              "properties": {"results": {"type": "array", "items": {
                "type": "object", "required": ["id", "status"], "properties": {
                    "id": {"type": ["string", "null"]},
                    "status": {"type": "string", "enum": ["pending", "committed", "rejected"]},
                    "height": {"type": ["integer", "null"]}, "index": {"type": ["integer", "null"]},
                    "error": {"type": ["string", "null"]}, "rule": {"type": ["string", "null"]}}}}}},
            "Disclosure": {
                "type": "object", "required": ["revealed", "hidden"], "additionalProperties": False,
                "description": "Every claim of the record, 1 to 256 in all: the revealed ones in full (key, "
                               "value, salt), the hidden ones as key and digest; each list in ascending key order "
                               "(docs/PROTOCOL.md). The holder computes it from the record file.",
                "anyOf": [{"properties": {"revealed": {"minItems": 1}}},
                          {"properties": {"hidden": {"minItems": 1}}}],
                "properties": {
                    "revealed": {"type": "array", "maxItems": 256, "items": {
                        "type": "object", "required": ["key", "value", "salt"], "additionalProperties": False,
                        "properties": {"key": {"type": "string", "minLength": 1, "maxLength": 100}, "value": {},
                                       "salt": HEX16}}},
                    "hidden": {"type": "array", "maxItems": 256, "items": {
                        "type": "object", "required": ["key", "digest"], "additionalProperties": False,
                        "properties": {"key": {"type": "string", "minLength": 1, "maxLength": 100},
                                       "digest": HEX32}}}}},
        }},
    }
