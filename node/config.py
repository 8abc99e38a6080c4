"""Node configuration: DATA/config.toml, written by `ler node init` and read by `ler node run`.

A data folder holds everything a node needs to restart: config.toml, genesis.json, node.key (mode 0600)
and the LevelDB database in db/. Every table and setting is optional: configs/node.example.toml lists
them all, with their defaults and what each does (a test keeps it equal to the defaults here).

Who may send this node peer messages: the keys of the authorities in the latest state (and of the
validators of the next two heights), plus every did listed under [[peers.nodes]]. So authorities need
not list each other's dids (genesis and governance votes say who they are); an observer, or any node
that is not an authority, must be listed with its did by the nodes that should accept its messages.
A peer listed by URL only is still sent messages and asked for blocks (blocks carry their own proof).
`ler node init --peer URL#DID` writes a [[peers.nodes]] entry; `--peer URL` a urls entry. A node also
learns an authority's URL from that authority's signed messages, so a newly voted-in authority is
reached without editing every config.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ler.block import MAX_BLOCK_TXS, Genesis
from ler.errors import LerError
from ler.files import write_durably
from ler.keys import KeyPair, public_key_from_did, read_key_file, read_key_file_did, write_key_file
from ler.tx import MAX_TX_BYTES
from node.client import ClientError, check_node_url

CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"
KEY_FILE = "node.key"
DB_DIR = "db"
PID_FILE = "node.pid"  # the running node's process id, there while it runs (`ler testnet` reads it)
SIGNED_FILE = "signed-state"  # a validator's record of what it last signed, beside the database's
MAX_RANGE_BLOCKS = 256  # blocks in one answer of block sync (GET /peer/v1/blocks), and so in one request


class ConfigError(LerError):
    """A data folder or configuration that cannot be used as it is."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    mempool_txs: int = 100_000
    mempool_bytes: int = 64 * 1024 * 1024
    block_txs: int = 2000
    wait_timeout_s: float = 30.0
    max_connections: int = 1024
    max_connections_per_address: int = 0  # 0: no bound per remote address (right behind a reverse proxy)
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class BlockTiming:
    batch_ms: int = 20
    heartbeat_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ConsensusTiming:
    propose: float = 3.0
    propose_increment: float = 0.5
    prevote: float = 0.5
    prevote_increment: float = 0.25
    precommit: float = 0.5
    precommit_increment: float = 0.25
    max_drift_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class GossipSettings:
    resend_s: float = 0.5
    backoff_max_s: float = 5.0
    timeout_s: float = 5.0
    relay_txs: bool = False
    rebroadcast_s: float = 30.0


@dataclass(frozen=True, slots=True)
class SyncSettings:
    batch_blocks: int = 64
    poll_s: float = 1.0


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A configured peer: where it listens, and (optionally) the did of its node key."""

    url: str
    did: str | None = None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data: Path
    host: str
    port: int
    role: str = "authority"
    limits: Limits = field(default_factory=Limits)
    blocks: BlockTiming = field(default_factory=BlockTiming)
    peers: tuple[str, ...] = ()  # every configured peer's URL (urls and nodes)
    peer_nodes: tuple[PeerSpec, ...] = ()  # every configured peer, with its did where known
    consensus: ConsensusTiming = field(default_factory=ConsensusTiming)
    gossip: GossipSettings = field(default_factory=GossipSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    public_url: str = ""

    @property
    def genesis_path(self) -> Path:
        return self.data / GENESIS_FILE

    @property
    def key_path(self) -> Path:
        return self.data / KEY_FILE

    @property
    def db_path(self) -> Path:
        return self.data / DB_DIR

    @property
    def signed_path(self) -> Path:
        return self.data / SIGNED_FILE

    @property
    def pid_path(self) -> Path:
        return self.data / PID_FILE

    @property
    def url(self) -> str:
        host = f"[{self.host.replace('%', '%25')}]" if ":" in self.host else self.host  # RFC 3986, 6874
        return f"http://{host}:{self.port}"

    @property
    def advertised_url(self) -> str:
        """The URL this node tells its peers to reach it at."""
        return self.public_url or self.url

    def load_genesis(self) -> Genesis:
        return Genesis.load(self.genesis_path)

    def load_key(self, passphrase: str | None = None) -> KeyPair:
        return read_key_file(self.key_path, passphrase)


def parse_listen(listen: str) -> tuple[str, int]:
    """`[node] listen` (and `ler node init --listen`): HOST:PORT, where HOST is an IPv4 address, a host
    name, or an IPv6 address in brackets ("[::1]:8701"; "::1:8701" is read as the same). A host that is
    none of these is refused here; one well formed that cannot be bound (unknown, or no address of this
    machine) is refused when the node starts (node/daemon.py)."""
    where = f"[node] listen {listen!r}"
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
        if not sep or not host:
            raise ConfigError(f"{where} must be HOST:PORT or [IPv6 address]:PORT, e.g. [::1]:8701")
    else:
        host, sep, port = listen.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{where} must be HOST:PORT, e.g. 127.0.0.1:8701 or [::1]:8701")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{where}: the port {port!r} is not a number") from None
    if not 1 <= p <= 65535:
        raise ConfigError(f"{where}: the port {p} is out of range (1 to 65535)")
    fault = _host_fault(host, listen.startswith("["))
    if fault:
        raise ConfigError(f"{where}: the host {host!r} {fault}")
    return host, p


# A host name's label, as RFC 1123 has it, and '_' too (container and service names use it).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host_fault(host: str, bracketed: bool) -> str | None:
    """What is wrong with a listen host, in words; None if it is an IP address or a well-formed host name."""
    if bracketed or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "is not an IPv6 address"
        return None
    labels = host.split(".")
    if all(label.isascii() and label.isdigit() for label in labels):  # dotted numbers: an IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "is not an IPv4 address (four numbers from 0 to 255, e.g. 127.0.0.1)"
        return None
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return "is neither an IP address nor a host name (letters, digits, '-', '_' and '.')"
    return None


def listen_text(host: str, port: int) -> str:
    """HOST:PORT as `[node] listen` writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_peer(text: str) -> PeerSpec:
    """A peer as given to `ler node init --peer`: "URL" or "URL#DID" (the did of the peer's node key)."""
    url, sep, did = text.partition("#")
    url = url.rstrip("/")
    if '"' in url or "\\" in url or any(ord(c) < 0x21 for c in url):
        raise ConfigError(f"peer URL {url!r} holds a character a URL cannot have")
    try:
        url = check_node_url(url)  # the same test and the same base URL as a client's --node
    except ClientError as exc:
        raise ConfigError(str(exc).replace("node URL", "peer URL", 1)) from None
    if not sep:
        return PeerSpec(url)
    try:
        public_key_from_did(did)
    except LerError as exc:
        raise ConfigError(f"peer {text!r}: {exc}") from None
    return PeerSpec(url, did)


def init_data_dir(data: str | os.PathLike[str], genesis_path: str | os.PathLike[str],
                  key_path: str | os.PathLike[str], listen: str, role: str = "authority",
                  peers: tuple[str | PeerSpec, ...] = (), consensus: dict[str, float] | None = None) -> NodeConfig:
    """Create a node's data folder: config, a copy of the genesis file, a copy of the node key.

    `peers` are URLs, "URL#DID" strings or PeerSpecs; `consensus` optional [consensus] settings.
    """
    d = Path(data)
    if (d / CONFIG_FILE).exists():
        raise ConfigError(f"{d} is already initialised (it has {CONFIG_FILE}); use another folder")
    Genesis.load(genesis_path)  # refuse a bad genesis before creating anything
    did = read_key_file_did(key_path)
    if role not in ("authority", "observer"):
        raise ConfigError("role must be authority or observer")
    del did  # read only to check the key file early, before anything is written
    host, port = parse_listen(listen)
    specs = [p if isinstance(p, PeerSpec) else parse_peer(p) for p in peers]
    unknown = sorted(set(consensus or {}) - set(ConsensusTiming.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown consensus setting {unknown[0]!r}")
    d.mkdir(parents=True, exist_ok=True)
    write_durably(d / GENESIS_FILE, Path(genesis_path).read_bytes(), 0o644)
    key_dst = d / KEY_FILE
    key_bytes = Path(key_path).read_bytes()
    if key_dst.exists():
        # Left by an init that stopped before writing config.toml (its last step): the same key goes on.
        if key_dst.read_bytes() != key_bytes:
            raise ConfigError(f"{key_dst} exists already and holds another key (left by an interrupted "
                              f"`ler node init` with another --key?); remove it, or use another folder")
    else:
        write_durably(key_dst, key_bytes, 0o600)
    url_list = ", ".join(json.dumps(p.url) for p in specs if p.did is None)
    consensus_lines = "".join(f"{k} = {v!r}\n" for k, v in (consensus or {}).items())
    text = (f'[node]\nlisten = "{listen_text(host, port)}"\nrole = "{role}"\n\n[limits]\n\n[blocks]\n\n'
            f"[consensus]\n{consensus_lines}\n[gossip]\n\n[sync]\n\n[peers]\nurls = [{url_list}]\n")
    for p in specs:
        if p.did is not None:
            text += f"\n[[peers.nodes]]\nurl = {json.dumps(p.url)}\ndid = {json.dumps(p.did)}\n"
    # Written whole or not at all, and last: a folder with config.toml is initialised, one without can be
    # again.
    write_durably(d / CONFIG_FILE, text.encode(), 0o644)
    return load_config(d)


def load_config(data: str | os.PathLike[str]) -> NodeConfig:
    d = Path(data)
    path = d / CONFIG_FILE
    try:
        doc = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{d} is not a node data folder (no {CONFIG_FILE}); run `ler node init` first") \
            from None
    except UnicodeDecodeError as exc:
        bad, line = exc.object[exc.start], exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{bad:02x} at offset {exc.start}, line {line}); "
                          "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None
    except NotADirectoryError:
        raise ConfigError(f"{d} is not a node data folder (it, or a folder above it, is a file)") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}") from None
    # A misspelt table or key would otherwise be ignored in silence, and the node run without the setting.
    unknown = sorted(set(doc) - set(_TABLES))
    if unknown:
        raise ConfigError(f"{path}: unknown table or setting {unknown[0]!r} (known: {', '.join(_TABLES)})")
    node = _table(doc, "node", path)
    unknown = sorted(set(node) - {"listen", "role", "public_url"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting node.{unknown[0]} (known: listen, role, public_url)")
    listen = node.get("listen", "127.0.0.1:8701")
    if not isinstance(listen, str):
        raise ConfigError(f"{path}: [node] listen must be a string, HOST:PORT")
    try:
        host, port = parse_listen(listen)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    role = node.get("role", "authority")
    if role not in ("authority", "observer"):
        raise ConfigError(f"{path}: role must be authority or observer")
    public_url = node.get("public_url", "")
    if not isinstance(public_url, str) or (public_url and not public_url.startswith(("http://", "https://"))):
        raise ConfigError(f"{path}: public_url must be an http(s) URL")
    limits = Limits(**known_settings(_table(doc, "limits", path), Limits, path))
    blocks = BlockTiming(**known_settings(_table(doc, "blocks", path), BlockTiming, path))
    consensus = ConsensusTiming(**known_settings(_table(doc, "consensus", path), ConsensusTiming, path))
    gossip = GossipSettings(**known_settings(_table(doc, "gossip", path), GossipSettings, path))
    sync = SyncSettings(**known_settings(_table(doc, "sync", path), SyncSettings, path))
    peers_table = _table(doc, "peers", path)
    unknown = sorted(set(peers_table) - {"urls", "nodes"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting peers.{unknown[0]} (known: urls, nodes)")
    urls = peers_table.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(p, str) for p in urls):
        raise ConfigError(f"{path}: peers.urls must be a list of URLs")
    nodes = peers_table.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise ConfigError(f"{path}: [[peers.nodes]] entries must be tables with url and did")
    specs: list[PeerSpec] = []
    for u in urls:
        specs.append(_peer_or_error(u, path))
    for n in nodes:
        if set(n) != {"url", "did"} or not all(isinstance(v, str) for v in n.values()):
            raise ConfigError(f"{path}: each [[peers.nodes]] entry needs exactly url and did (strings)")
        specs.append(_peer_or_error(f"{n['url']}#{n['did']}", path))
    by_url: dict[str, PeerSpec] = {}
    for spec in specs:  # a URL listed twice keeps the entry that names its did
        if spec.url not in by_url or spec.did is not None:
            by_url[spec.url] = spec
    return NodeConfig(data=d.resolve(), host=host, port=port, role=role, limits=limits, blocks=blocks,
                      peers=tuple(by_url), peer_nodes=tuple(by_url.values()), consensus=consensus,
                      gossip=gossip, sync=sync, public_url=public_url.rstrip("/"))


_TABLES = ("node", "limits", "blocks", "consensus", "gossip", "sync", "peers")


def _peer_or_error(text: str, path: Path) -> PeerSpec:
    try:
        return parse_peer(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _table(doc: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    t = doc.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return t


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


# Settings for which 0 is not a choice but a fault: a loop with no pause in it (resend_s, poll_s), a
# block that can hold nothing, a body or pool that takes nothing, a peer request that times out at once,
# a consensus step that times out before any message can arrive. They must be more than 0.
_POSITIVE: dict[type, frozenset[str]] = {
    Limits: frozenset({"max_body_bytes", "mempool_txs", "mempool_bytes", "block_txs", "max_connections",
                       "idle_timeout_s", "body_timeout_s"}),
    ConsensusTiming: frozenset({"propose", "prevote", "precommit"}),
    GossipSettings: frozenset({"resend_s", "timeout_s"}),
    SyncSettings: frozenset({"batch_blocks", "poll_s"}),
}


_HOUR, _DAY = 3600, 86400
_GIB = 1024 ** 3
# The most each setting may be: far beyond any use, but short of what reads as a slip (milliseconds
# written where seconds are meant, a digit too many) that would have the node wait for hours in
# silence, or of what the protocol caps anyway (a block's transactions, a sync range's blocks).
_AT_MOST: dict[type, dict[str, int | float]] = {
    Limits: {"max_body_bytes": _GIB, "mempool_txs": 10_000_000, "mempool_bytes": 64 * _GIB,
             "block_txs": MAX_BLOCK_TXS, "wait_timeout_s": _HOUR, "max_connections": 1_000_000,
             "max_connections_per_address": 1_000_000, "idle_timeout_s": _DAY, "body_timeout_s": _DAY},
    BlockTiming: {"batch_ms": 60_000, "heartbeat_s": _DAY},
    ConsensusTiming: {"propose": 600, "propose_increment": 600, "prevote": 600, "prevote_increment": 600,
                      "precommit": 600, "precommit_increment": 600, "max_drift_ms": _HOUR * 1000},
    GossipSettings: {"resend_s": 60, "backoff_max_s": _HOUR, "timeout_s": _HOUR, "rebroadcast_s": _DAY},
    SyncSettings: {"batch_blocks": MAX_RANGE_BLOCKS, "poll_s": _HOUR},
}


# The least some settings may be, with why: below it the node cannot do its work at all.
_AT_LEAST: dict[type, dict[str, tuple[int, str]]] = {
    # A pool smaller than one transaction refuses every submission with "mempool full, retry after the
    # next block", which no block ever mends.
    Limits: {"mempool_bytes": (MAX_TX_BYTES, "the largest transaction a node accepts")},
}


def known_settings(table: dict[str, Any], cls: type, path: Path) -> dict[str, Any]:
    """One table's settings, each a field of `cls` with a value of its default's type, not negative (and
    more than 0 where 0 would stop the node working, at least its bound in `_AT_LEAST` where it has one),
    and at most its bound in `_AT_MOST`."""
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    out = {}
    for k, v in table.items():
        if k not in fields:
            raise ConfigError(f"{path}: unknown setting {k!r} (known: {', '.join(fields)})")
        default = fields[k].default
        if isinstance(v, bool) != isinstance(default, bool) or (
                not isinstance(v, type(default)) and not (isinstance(default, float) and isinstance(v, int))):
            raise ConfigError(f"{path}: {k} must be {_KINDS.get(type(default), type(default).__name__)}")
        if isinstance(v, float) and not math.isfinite(v):  # TOML has inf and nan
            raise ConfigError(f"{path}: {k} must be a finite number")
        if v < 0:
            raise ConfigError(f"{path}: {k} must not be negative")
        if v == 0 and k in _POSITIVE.get(cls, ()):
            raise ConfigError(f"{path}: {k} must be more than 0")
        least, why = _AT_LEAST.get(cls, {}).get(k, (0, ""))
        if v < least:
            raise ConfigError(f"{path}: {k} must be at least {least:,} ({why}); it is {v:,}")
        most = _AT_MOST[cls].get(k)
        if most is not None and v > most:
            unit = " (milliseconds)" if k.endswith("_ms") else " (seconds)" if k.endswith("_s") or (
                cls is ConsensusTiming) else ""
            raise ConfigError(f"{path}: {k} must be at most {most:,}{unit}; it is {v:,}")
        out[k] = v
    return out


def write_new_key(path: str | os.PathLike[str], passphrase: str | None = None) -> KeyPair:
    key = KeyPair.generate()
    write_key_file(path, key, passphrase)
    return key
