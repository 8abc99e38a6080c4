"""The web verifier: a page the node serves at GET /verify, for someone with no technical knowledge.

They drop a proof bundle on it and see the verdict in words: what is proven, by whom, whether the issuer
was accredited, revoked or not, which claims the holder kept hidden, every check with a plain-language
line, and the block the proof speaks for. The page posts the file to the node's own POST /v1/verify
(the offline check against the node's genesis) and reads GET /v1/genesis to name the network it used.

Everything the page needs is in node/static and served here: no external assets. A strict Content
Security Policy says so to the browser too (scripts, styles and requests from this node only), so even a
rendering bug could not run text from a bundle as code. The files are read once, when the app is built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

PAGE_PATH = "/verify"
STATIC_PREFIX = "/static/"

# Only the node itself: no CDN, no web fonts, no inline script, no frames, no form posts elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _load_static() -> dict[str, StaticFile]:
    files: dict[str, StaticFile] = {}
    for entry in resources.files("node").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if not entry.is_file() or suffix not in _MEDIA_TYPES:
            continue
        body = entry.read_bytes()
        files[entry.name] = StaticFile(body, _MEDIA_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return files


def _respond(request: web.Request, f: StaticFile) -> web.Response:
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache", "ETag": f.etag}
    if request.headers.get("If-None-Match") == f.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=f.body, content_type=f.content_type, charset="utf-8", headers=headers)


def add_verify_page(app: web.Application) -> None:
    """Add GET /verify (the page), GET /static/{name} (its script and style) and GET / (to the page)."""
    files = _load_static()
    page = files.pop("verify.html")

    async def verify_page(request: web.Request) -> web.Response:
        return _respond(request, page)

    async def static_file(request: web.Request) -> web.Response:
        f = files.get(request.match_info["name"])
        if f is None:
            raise web.HTTPNotFound(reason="no such file")
        return _respond(request, f)

    async def root(request: web.Request) -> web.Response:
        # Someone who types the node's address is most likely a person wanting to check a file.
        raise web.HTTPFound(PAGE_PATH)

    app.router.add_get(PAGE_PATH, verify_page)
    app.router.add_get(STATIC_PREFIX + "{name}", static_file)
    app.router.add_get("/", root)
