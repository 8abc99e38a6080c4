"""Node configuration: DATA/config.toml, written by `ler node init` and read by `ler node run`.

A data folder holds everything a node needs to restart: config.toml, genesis.json, node.key (mode 0600)
and the LevelDB database in db/.

    [node]
    listen = "127.0.0.1:8701"
    role = "authority"            # or "observer"

    [limits]
    max_body_bytes = 8388608       # largest HTTP request body
    mempool_txs = 100000
    mempool_bytes = 67108864
    block_txs = 2000               # most transactions in one block
    wait_timeout_s = 30            # longest ?wait on a submission

    [blocks]
    batch_ms = 20                  # after the first pending tx, wait this long to fill a block
    heartbeat_s = 0                # 0: no empty blocks at all while idle

    [peers]                        # for the network (issue: multi-node); empty for a single node
    urls = []
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ler.block import Genesis
from ler.errors import LerError
from ler.keys import KeyPair, read_key_file, read_key_file_did, write_key_file

CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"
KEY_FILE = "node.key"
DB_DIR = "db"


class ConfigError(LerError):
    """A data folder or configuration that cannot be used as it is."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    mempool_txs: int = 100_000
    mempool_bytes: int = 64 * 1024 * 1024
    block_txs: int = 2000
    wait_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class BlockTiming:
    batch_ms: int = 20
    heartbeat_s: float = 0.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data: Path
    host: str
    port: int
    role: str = "authority"
    limits: Limits = field(default_factory=Limits)
    blocks: BlockTiming = field(default_factory=BlockTiming)
    peers: tuple[str, ...] = ()

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
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def load_genesis(self) -> Genesis:
        return Genesis.load(self.genesis_path)

    def load_key(self, passphrase: str | None = None) -> KeyPair:
        return read_key_file(self.key_path, passphrase)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT, e.g. 127.0.0.1:8701")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"listen port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"listen port {p} is out of range")
    return host, p


def init_data_dir(data: str | os.PathLike[str], genesis_path: str | os.PathLike[str],
                  key_path: str | os.PathLike[str], listen: str, role: str = "authority",
                  peers: tuple[str, ...] = ()) -> NodeConfig:
    """Create a node's data folder: config, a copy of the genesis file, a copy of the node key."""
    d = Path(data)
    if (d / CONFIG_FILE).exists():
        raise ConfigError(f"{d} is already initialised (it has {CONFIG_FILE}); use another folder")
    Genesis.load(genesis_path)  # refuse a bad genesis before creating anything
    did = read_key_file_did(key_path)
    if role not in ("authority", "observer"):
        raise ConfigError("role must be authority or observer")
    del did  # read only to check the key file early, before anything is written
    host, port = parse_listen(listen)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(genesis_path, d / GENESIS_FILE)
    key_dst = d / KEY_FILE
    if key_dst.exists():
        raise ConfigError(f"{key_dst} exists already")
    fd = os.open(key_dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Path(key_path).read_bytes())
    peer_list = ", ".join(f'"{p}"' for p in peers)
    text = (f'[node]\nlisten = "{host}:{port}"\nrole = "{role}"\n\n[limits]\n\n[blocks]\n\n'
            f"[peers]\nurls = [{peer_list}]\n")
    (d / CONFIG_FILE).write_text(text)
    return load_config(d)


def load_config(data: str | os.PathLike[str]) -> NodeConfig:
    d = Path(data)
    path = d / CONFIG_FILE
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{d} is not a node data folder (no {CONFIG_FILE}); run `ler node init` first") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    node = _table(doc, "node", path)
    host, port = parse_listen(str(node.get("listen", "127.0.0.1:8701")))
    role = node.get("role", "authority")
    if role not in ("authority", "observer"):
        raise ConfigError(f"{path}: role must be authority or observer")
    limits = Limits(**_known(_table(doc, "limits", path), Limits, path))
    blocks = BlockTiming(**_known(_table(doc, "blocks", path), BlockTiming, path))
    peers = _table(doc, "peers", path).get("urls", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise ConfigError(f"{path}: peers.urls must be a list of URLs")
    return NodeConfig(data=d.resolve(), host=host, port=port, role=role, limits=limits, blocks=blocks,
                      peers=tuple(peers))


def _table(doc: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    t = doc.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return t


def _known(table: dict[str, Any], cls: type, path: Path) -> dict[str, Any]:
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    out = {}
    for k, v in table.items():
        if k not in fields:
            raise ConfigError(f"{path}: unknown setting {k!r} (known: {', '.join(fields)})")
        default = fields[k].default
        if not isinstance(v, type(default)) and not (isinstance(default, float) and isinstance(v, int)):
            raise ConfigError(f"{path}: {k} must be a {type(default).__name__}")
        if v < 0:
            raise ConfigError(f"{path}: {k} must not be negative")
        out[k] = v
    return out


def write_new_key(path: str | os.PathLike[str], passphrase: str | None = None) -> KeyPair:
    key = KeyPair.generate()
    write_key_file(path, key, passphrase)
    return key
