"""A small synchronous client for a node's HTTP/JSON API (/v1), as the `ler` command line uses it.

Stdlib only (urllib), so an issuer's script can use it without an event loop. Every failure is a
ClientError carrying a reason fit to show a user: the node's own {"error": reason} for a 4xx/5xx answer
(with its HTTP status), or "cannot reach node at URL: ..." (status None) when nothing answered.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from ler.errors import LerError
from ler.tx import Tx

DEFAULT_NODE = "http://127.0.0.1:8701"
NODE_ENV = "LER_NODE"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_SETTLED = ("committed", "rejected")


class ClientError(LerError):
    """A request the node refused (status = its HTTP status) or that reached no node (status None)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status

    @property
    def unreachable(self) -> bool:
        return self.status is None


#: The API's path prefix. Every request adds it, so a URL given with it (copied from a /v1/status link,
#: say) would ask for /v1/v1/status and get a bare 404: the URL is taken without it instead.
API_PREFIX = "/v1"


def check_node_url(url: str) -> str:
    """The node's base URL: without a trailing slash or a trailing /v1 (the API prefix, which every
    request adds); ClientError unless it is an http(s) URL with a host (and a port from 1 to 65535 if it
    gives one) and no query or fragment. Any other path stays: a node behind a reverse proxy may be served under one."""
    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed [IPv6 address, a port that is not a number up to 65535
        usable = False
    if not usable:
        raise ClientError(f"node URL {url!r} must look like http://HOST:PORT (a port from 1 to 65535)")
    if "?" in url or "#" in url:
        # Every request appends its path to the base URL, which would land after the query (asking the
        # base path for it) or in the fragment (never sent).
        raise ClientError(f"node URL {url!r} must have no query (?...) or fragment (#...): give the node's "
                          "base URL, http://HOST:PORT (every command adds the path it asks for)")
    base = url.rstrip("/")
    path = parts.path.rstrip("/")
    if path == API_PREFIX or path.endswith(API_PREFIX):
        base = base.removesuffix(API_PREFIX).rstrip("/")
    return base


class NodeClient:
    def __init__(self, url: str = DEFAULT_NODE, timeout: float = 10.0) -> None:
        self.url = check_node_url(url)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"NodeClient({self.url})"

    # --- queries -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._get("/v1/status")

    def health(self) -> dict[str, Any]:
        """GET /health: {"ok", "status": "ok" | "degraded", "warnings": [{"event", "reason", "height"?}],
        ...}; a node of an older version may give only some of these."""
        return self._get("/health")

    def genesis(self) -> dict[str, Any]:
        return self._get("/v1/genesis")

    def tx(self, id_hex: str) -> dict[str, Any]:
        return self._get(f"/v1/txs/{_seg(id_hex)}")

    def record(self, id_hex: str) -> dict[str, Any]:
        return self._get(f"/v1/records/{_seg(id_hex)}")

    def records(self, *, issuer: str | None = None, holder: str | None = None) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("issuer", issuer), ("holder", holder)) if v is not None}
        return list(self._get("/v1/records", query).get("records", []))

    def issuer(self, did: str) -> dict[str, Any]:
        return self._get(f"/v1/issuers/{_seg(did)}")

    def issuer_or_none(self, did: str) -> dict[str, Any] | None:
        """The issuer's entry, or None if the node has no such issuer (404)."""
        try:
            return self.issuer(did)
        except ClientError as exc:
            if exc.status == 404:
                return None
            raise

    def issuers(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/issuers").get("issuers", []))

    def authorities(self) -> dict[str, Any]:
        """{"authorities": [{"did", "name"}], "proposals": [{"action", "votes", "opened"}]}"""
        return self._get("/v1/authorities")

    def block(self, height: int | str = "latest") -> dict[str, Any]:
        return self._get(f"/v1/blocks/{_seg(str(height))}")

    # --- actions -----------------------------------------------------------------------------------
    def submit(self, txs: Sequence[Tx], wait: bool = True, timeout: float = 30) -> list[dict[str, Any]]:
        """Submit transactions; with `wait`, until each is committed or rejected or `timeout` passes.

        Returns one result per transaction: {"id", "status": pending|committed|rejected, "height",
        "index", "error", "rule"}. A rejection is a result, not an exception; ClientError means the
        submission itself failed (unreachable node, malformed request).
        """
        body = {"txs": [tx.to_json() for tx in txs]}
        query: dict[str, str] = {}
        http_timeout = self.timeout
        if wait:
            # The node takes whole seconds (and may cap them); wait_tx covers any remainder.
            query = {"wait": "1", "timeout": str(max(1, math.ceil(timeout)))}
            http_timeout = max(self.timeout, timeout + 10)
        try:
            obj = self._request("POST", "/v1/txs", query, body, http_timeout)
        except _HttpError as exc:
            # 400 "all rejected" still carries per-transaction results.
            if isinstance(exc.body, dict) and isinstance(exc.body.get("results"), list):
                obj = exc.body
            else:
                raise exc.client_error() from None
        results = obj.get("results")
        if not isinstance(results, list) or len(results) != len(txs) or not all(
                isinstance(r, dict) for r in results):
            raise ClientError(f"node at {self.url} answered the submission without one result per "
                              "transaction")
        return results

    def wait_tx(self, id_hex: str, timeout: float = 30, poll: float = 0.25) -> dict[str, Any]:
        """Poll GET /v1/txs/{id} until it is committed or rejected, or `timeout` seconds pass.

        Returns the last answer (status "pending" on timeout). Used when a submission came back
        pending because the node's own wait limit is shorter than ours.
        """
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            try:
                info = self.tx(id_hex)
            except ClientError as exc:
                if exc.status != 404:  # 404: not yet known to this node (e.g. still being gossiped)
                    raise
                info = {"id": id_hex, "status": "pending", "height": None, "index": None, "error": None}
            if info.get("status") in _SETTLED or time.monotonic() >= deadline:
                return info
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)

    def bundle(self, record_id_hex: str, disclosure_json: dict[str, Any]) -> dict[str, Any]:
        """A proof bundle (ProofBundle JSON) for one record, revealing what `disclosure_json` reveals."""
        return self._post(f"/v1/records/{_seg(record_id_hex)}/bundle", {"disclosure": disclosure_json})

    def stack(self, items: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """One proof bundle for several (record id hex, disclosure JSON) pairs."""
        return self._post("/v1/bundles", {"records": [{"record_id": r, "disclosure": d} for r, d in items]})

    def status_proof(self, record_ids_hex: Sequence[str], since: int) -> dict[str, Any]:
        """A fresh status proof (ler.bundle.StatusProof JSON) for records of a bundle whose head is `since`."""
        return self._post("/v1/status/records", {"records": list(record_ids_hex), "since": since})

    def verify(self, bundle_json: dict[str, Any]) -> dict[str, Any]:
        """Ask the node to verify a bundle (a convenience; `ler verify` checks offline instead)."""
        return self._post("/v1/verify", bundle_json)

    # --- transport ---------------------------------------------------------------------------------
    def _get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            return self._request("GET", path, query or {}, None, self.timeout)
        except _HttpError as exc:
            raise exc.client_error() from None

    def _post(self, path: str, body: Any) -> dict[str, Any]:
        try:
            return self._request("POST", path, {}, body, self.timeout)
        except _HttpError as exc:
            raise exc.client_error() from None

    def _request(self, method: str, path: str, query: dict[str, str], body: Any,
                 timeout: float) -> dict[str, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, _read_quietly(exc)
            raise _HttpError(self.url, method, path, status, json_or_none(raw)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            if isinstance(reason, TimeoutError):
                why = f"no answer within {_num(timeout)} s"
            raise ClientError(f"cannot reach node at {self.url}: {why}") from None
        except TimeoutError:
            raise ClientError(f"cannot reach node at {self.url}: no answer within {_num(timeout)} s") \
                from None
        except (OSError, ValueError) as exc:  # connection reset mid-answer, malformed URL
            raise ClientError(f"cannot reach node at {self.url}: {exc}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ClientError(f"node at {self.url} sent an answer larger than {MAX_RESPONSE_BYTES} bytes")
        obj = json_or_none(raw)
        if not isinstance(obj, dict):
            raise ClientError(f"node at {self.url} answered {method} {path} with something that is not "
                              f"a JSON object (HTTP {status})", status)
        return obj


class _HttpError(Exception):
    """A 4xx/5xx answer, before it is turned into a ClientError (submit reads its body first)."""

    def __init__(self, url: str, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(status)
        self.url, self.method, self.path, self.status, self.body = url, method, path, status, body

    def client_error(self) -> ClientError:
        reason = self.body.get("error") if isinstance(self.body, dict) else None
        if self.status == 404 and reason in (None, "", "Not Found"):
            # No such route at all (a resource the API does not hold has a reason of its own): the URL
            # given is most likely not the node's base URL but a page or a path under it.
            return ClientError(f"{self.url}{self.path} is not found (HTTP 404): is {self.url} the node's base "
                               f"URL? Give it as http://HOST:PORT, with no path (the node's API is under "
                               f"{API_PREFIX}, which every command adds)", self.status)
        if not isinstance(reason, str) or not reason:
            reason = f"node at {self.url} answered {self.method} {self.path} with HTTP {self.status}"
        return ClientError(reason, self.status)


def json_or_none(raw: bytes) -> Any:
    """The JSON another party sent, or None for anything else: not UTF-8, not JSON, nested past the
    parser's depth (RecursionError), an integer past Python's digit limit (a bare ValueError)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read(MAX_RESPONSE_BYTES)
    except OSError:
        return b""


def _seg(s: str) -> str:
    """One URL path segment (dids hold ':', which is fine in a path, but nothing may add a '/')."""
    return urllib.parse.quote(s, safe=":")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
