"""The chain store: blocks, certificates, indexes and the authenticated state, in one LevelDB.

Layout (all keys ASCII prefixes; heights as 8-byte big-endian so they sort):
  meta/genesis            -> genesis hash (32)          meta/height -> last committed height (8)
  meta/genesis_state      -> state root after genesis (32)
  meta/flat_state         -> b"2" when st/ below holds leaf hashes and is complete as of meta/flat_height
  meta/flat_height        -> the height st/ describes (8), written in the batch of every block
  b/<h>                   -> Block (canonical msgpack)  c/<h> -> CommitCertificate of block h
  bh/<block hash>         -> h
  tx/<tx id>              -> [height, index] (canonical msgpack)
  n/<node hash>           -> sparse Merkle tree node (storage.smt encoding)
  st/<state key>          -> the hash of that key's leaf in the latest state (a flat index, see below)
  hist/<level:1><index:8> -> hash of a perfect subtree of the history tree (see storage/history.py)
  val/<h>                 -> validator keys for height h, written only where the set changes
  ri/<issuer did>\x00<h><record id>, rh/<holder did>\x00<h><record id> -> b"" (record indexes)
  is/<issuer did>         -> b"" (every did that ever had an issuer entry)
  en/<record id><endorser key> -> b"" (endorsement index)
  pr/<action id>          -> b"" (governance proposals open in the latest state)
  pending/<tx id>         -> raw tx accepted but not yet committed (survives a crash)
  consensus/signed        -> the SignedState a validator persisted before sending what it signed
  consensus/proposal      -> the last Proposal it signed (with its block), to re-propose it after a crash
  evidence/<h><...>       -> evidence of equivocation (canonical msgpack), kept for the API

Every committed block is one LevelDB write batch written with sync=True: after `commit_block` returns,
a kill -9 loses nothing of it, and before, the block is absent as a whole. The genesis state is written
the same way when a data folder is first opened, so a folder either belongs to one chain entirely or is
empty.

The state lives in a sparse Merkle tree (n/): the state at height h is the tree under
header(h).state_root. Nodes are content-addressed and never deleted, so the state at any committed height
stays readable and provable. Roots and proofs come from the tree alone. Beside it, st/ indexes the latest
state, written in the same batch as the block that changes it: for each key, the hash of its leaf, which
holds the value (n/). Reading the latest value of a key (every admission check and block execution does)
is then two lookups instead of a walk of about twenty tree nodes, and an absent key, the usual case for a
new record, costs a Bloom filter probe. The value itself is stored once, in its leaf: a copy in st/ as
well (as earlier versions kept) was nearly a fifth of all a record anchor writes, and every byte written
is written again by LevelDB's compactions.

st/ is trusted only when meta/flat_state says this form and meta/flat_height equals the height. Otherwise
(a folder made by an earlier version, whose st/ held values or did not exist; or one that a version
not keeping this index has committed blocks to since) opening the folder rebuilds st/ from the tree at
the latest root, in one walk of it.

Validator sets: validators(1) = validators(2) = the genesis authorities, and a set change committed in
block h takes effect at h + 2 (val/<h+2>), so next_validators_hash in block h + 1 announces it. The few
val/ entries are held in memory.

One writer at a time: `execute`, `make_block`, `validate_block` and `commit_block` are meant to be called
by one consensus or sync task. Reads may come from other threads; they only ever see whole blocks,
because the cached height moves only after a block's batch is durable.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import plyvel

from ler import codec
from ler.block import MAX_BLOCK_TXS, Block, CommitCertificate, Genesis, Header, tx_root, validators_hash
from ler.errors import DecodeError, ProofError, RuleError
from ler.keys import sha256
from ler.ledger import Context, MemoryState, Overlay, apply_genesis, apply_tx, check_tx, get_authorities
from ler.merkle import inclusion_proof
from ler.smt import EMPTY, StateProof, leaf_hash
from ler.state import (
    AuthoritySet,
    EndorsementEntry,
    IssuerEntry,
    Proposal,
    RecordEntry,
    StateView,
    authorities_key,
    endorsement_key,
    issuer_key,
    proposal_key,
    record_key,
)
from ler.tx import GovVote, IssuerRotate, RecordAnchor, RecordEndorse, Tx
from ler.wire import Wire, packb
from storage import smt
from storage.history import HistoryError, HistoryTree, StagedWrites
from storage.keyfilter import KeyFilter
from storage.smt import LEAF_TAG, MemoryNodeStore, NodeStoreError, SparseMerkleTree

log = logging.getLogger("ler.storage")

META_GENESIS = b"meta/genesis"
META_GENESIS_STATE = b"meta/genesis_state"
META_FLAT_STATE = b"meta/flat_state"
FLAT_STATE_PREFIX = b"st/"
META_FLAT_HEIGHT = b"meta/flat_height"
FLAT_LEAF_HASHES = b"2"  # meta/flat_state of st/ as this version keeps it
META_HEIGHT = b"meta/height"
HISTORY_PREFIX = b"hist/"
NODE_PREFIX = b"n/"
TX_PREFIX = b"tx/"
PENDING_PREFIX = b"pending/"
VALIDATORS_PREFIX = b"val/"
ISSUER_INDEX_PREFIX = b"is/"
ENDORSEMENT_INDEX_PREFIX = b"en/"
PROPOSAL_INDEX_PREFIX = b"pr/"
#: Keys the node may write outside a block (put_meta): what a validator signed, and evidence.
META_PREFIXES = (b"consensus/", b"evidence/")

#: Room for a block's transactions: the decode limit every peer applies, less ample space for the
#: header and the parent's certificate (128 signatures are under 15 KiB).
MAX_BLOCK_TX_BYTES = codec.MAX_MESSAGE_BYTES - 64 * 1024
_TX_OVERHEAD = 5  # the msgpack bin header in front of each raw tx in the block's array
_HEADER_CACHE_SIZE = 1024
#: Entries of the latest state kept in memory (values and absences); emptied when it would grow past this.
_STATE_CACHE_SIZE = 200_000
_NODE_CACHE_SIZE = 150_000  # state tree nodes per cache generation (about 100 bytes each, 230 with the dict)
_MISSING = object()
_W = TypeVar("_W", bound=Wire)


def _h8(h: int) -> bytes:
    return h.to_bytes(8, "big")


def _block_key(h: int) -> bytes:
    return b"b/" + _h8(h)


def _cert_key(h: int) -> bytes:
    return b"c/" + _h8(h)


def _block_hash_key(block_hash: bytes) -> bytes:
    return b"bh/" + block_hash


def _val_key(h: int) -> bytes:
    return VALIDATORS_PREFIX + _h8(h)


def _show(v: object) -> str:
    return v.hex() if isinstance(v, bytes) else repr(v)


def _by_issuer_prefix(did: str) -> bytes:
    return b"ri/" + did.encode("utf-8") + b"\x00"


def _by_holder_prefix(did: str) -> bytes:
    return b"rh/" + did.encode("utf-8") + b"\x00"


class StoreError(Exception):
    """The store cannot do what was asked: another chain's folder, a damaged database, a block out of order.

    `reason` says why in words fit for a log line or an operator.
    """

    @property
    def reason(self) -> str:
        return str(self)


def _orphaned_db_files(path: Path) -> list[str]:
    """The LevelDB files in `path` if it has no CURRENT file (which names the live MANIFEST), else [].

    Opened with create_if_missing, LevelDB takes such a folder for a new database: it writes a new
    MANIFEST and CURRENT and deletes the table and log files as obsolete, and the blocks in them are
    lost. A folder holding none of them (new, or with only LOCK/LOG left) is a new database.
    """
    if (path / "CURRENT").exists():
        return []
    return sorted(name for name in os.listdir(path)
                  if name.startswith("MANIFEST-") or name.endswith((".ldb", ".sst", ".log")))


def _leveldb_says(exc: BaseException) -> str:
    """LevelDB's message (plyvel gives it as bytes)."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _damage_hint(says: str) -> str:
    """What the operator can do about a database LevelDB found damaged (a table block whose checksum fails,
    "Corruption: block checksum mismatch: <file>"). The bytes on disk changed after LevelDB wrote them (a
    failing disk, a file edited or copied in while a node ran): nothing in that file can be trusted, and
    LevelDB has no second copy. The chain has copies elsewhere: a backup of the folder, or the network's
    other nodes, from which a node started on an empty folder syncs every block again (checking each,
    as any synced block); an authority's DATA/signed-state keeps it from signing again what it signed."""
    if "Corruption" not in says and "checksum" not in says:
        return ""
    return ("; a file of the database changed on disk after it was written (a failing disk, or a file "
            "changed or copied in while a node ran), and what it holds cannot be trusted: with the node "
            "stopped, restore the folder from a backup, or move it aside and start the node again to sync "
            "the chain afresh from its peers (a node with no peers can only be restored)")


def _disk_hint(says: str) -> str:
    """What the operator can do about LevelDB's refusal to open or write a database, from its message."""
    if "No space left" in says or "File too large" in says:
        return "; free some space on that disk and start the node again"
    if "Read-only file system" in says:
        return "; the disk is mounted read-only: remount it writable (or move the data folder) and start again"
    if "Permission denied" in says or "Operation not permitted" in says:
        return "; the node's user may not write there: run it as the folder's owner, or fix the permissions"
    if "lock" in says.lower() and ("unavailable" in says or "already held" in says):
        return " (is another node using it?)"
    return ""


class _CheckedDB:
    """The database handle the store uses: point reads verify the checksum of the table block they read,
    so a damaged file is reported (StoreError naming the folder) instead of taken as data; so are
    failed writes. Iterators are plyvel's own, unchecked: a checked plyvel iterator ends silently at a
    bad block, which would hide entries, while what an unchecked one returns is decoded and checked by
    its reader. (Opened with paranoid_checks, LevelDB also checks what it compacts.)"""

    __slots__ = ("_checked_get", "db", "on_damage", "path")

    def __init__(self, db: plyvel.DB, path: Path) -> None:
        self.db = db
        self.path = path
        self._checked_get = functools.partial(db.get, verify_checksums=True)
        #: Told of every damage found (from whichever thread read it), so that a running node can stop.
        self.on_damage: Callable[[StoreError], None] | None = None

    def damaged(self, exc: BaseException) -> StoreError:
        says = _leveldb_says(exc)
        error = StoreError(f"the database in {self.path} is corrupt or unreadable: {says}{_damage_hint(says)}")
        if self.on_damage is not None:
            self.on_damage(error)
        return error

    def unwritable(self, exc: BaseException) -> StoreError:
        """A failed write: LevelDB refuses every write after one, so the node has to stop. A full disk is
        the usual cause, and one the operator can mend: the batch never landed, and what it held was not
        acknowledged to anyone."""
        says = _leveldb_says(exc)
        return StoreError(f"the database in {self.path} could not be written: {says}{_disk_hint(says)}")

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._checked_get(key)
        except plyvel.Error as exc:
            raise self.damaged(exc) from None

    def iterator(self, **options: Any) -> Iterator[Any]:
        try:
            yield from self.db.iterator(**options)
        except plyvel.Error as exc:
            raise self.damaged(exc) from None

    def write_batch(self, **options: Any) -> Any:
        return self.db.write_batch(**options)

    def write(self, batch: Any) -> None:
        """Write a batch made by `write_batch`."""
        try:
            batch.write()
        except plyvel.Error as exc:
            raise self.unwritable(exc) from None

    def put(self, key: bytes, value: bytes, **options: Any) -> None:
        try:
            self.db.put(key, value, **options)
        except plyvel.Error as exc:
            raise self.unwritable(exc) from None

    def delete(self, key: bytes, **options: Any) -> None:
        try:
            self.db.delete(key, **options)
        except plyvel.Error as exc:
            raise self.unwritable(exc) from None

    def close(self) -> None:
        self.db.close()


class InvalidBlock(StoreError):
    """A block that breaks a validity rule. `rule` names it: "header.<field>", "block.last_cert",
    "tx.decode", "tx.duplicate", "tx.chain", "tx.signature", or a ledger rule such as "anchor.duplicate"."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule


@dataclass(slots=True)
class ExecutionResult:
    """What applying a block's transactions to the latest state gives; nothing of it is written yet."""

    height: int
    time: int
    state_root: bytes
    applied: list[Tx]                        # in block order
    rejected: list[tuple[Tx, RuleError]]     # only when drop_invalid=True
    state_writes: dict[bytes, bytes | None]  # state key -> new value (None = deleted)
    node_writes: dict[bytes, bytes]          # new SMT nodes (hash -> encoding) to persist
    authorities_after: tuple[bytes, ...]     # authority keys in state after this block


class _DbNodes:
    """The SMT's node store read from the database (n/ keys). Writes go through a block's batch only.

    Nodes are named by their hash, so a copy in memory can never be stale. Two generations of them are
    kept: the nodes read and those of committed blocks (`remember`) go into `young`; when it holds
    `_NODE_CACHE_SIZE`, it becomes `old` (the previous `old` is dropped), and a node found in `old` moves
    back to `young`. So the nodes in use (the upper levels of the tree, which every block rewrites, and
    the recent paths) stay in memory, at most twice that many in all, and building or checking a block
    rarely goes to the database for them.
    """

    __slots__ = ("db", "old", "young")

    def __init__(self, db: _CheckedDB) -> None:
        self.db = db
        self.young: dict[bytes, bytes] = {}
        self.old: dict[bytes, bytes] = {}

    def get_node(self, h: bytes) -> bytes | None:
        data = self.young.get(h)
        if data is None:
            data = self.old.get(h)
            if data is None:
                data = self.db.get(NODE_PREFIX + h)
                if data is None:
                    return None
            self._keep(h, data)
        return data

    def _keep(self, h: bytes, data: bytes) -> None:
        young = self.young
        if len(young) >= _NODE_CACHE_SIZE:
            # Replaced, not cleared: a reader in another thread may still hold the dicts.
            self.old, self.young = young, {}
            young = self.young
        young[h] = data

    def remember(self, nodes: dict[bytes, bytes]) -> None:
        """Nodes just written to the database (a committed block's)."""
        young = self.young
        if len(young) + len(nodes) <= _NODE_CACHE_SIZE:
            young.update(nodes)
        else:
            self.old, self.young = young, dict(nodes) if len(nodes) <= _NODE_CACHE_SIZE else {}

    def put_nodes(self, nodes: Mapping[bytes, bytes]) -> None:
        raise TypeError("state nodes reach the database only through a block's write batch")


class _StagingNodes:
    """New nodes of one block's update, in memory, layered over the stored ones."""

    __slots__ = ("base", "get_node", "nodes")

    def __init__(self, base: _DbNodes | MemoryNodeStore) -> None:
        self.base = base
        self.nodes: dict[bytes, bytes] = {}
        # Nothing staged yet: reads go straight to the stored nodes (an update reads many, and writes
        # its new ones only at its end).
        self.get_node: Callable[[bytes], bytes | None] = base.get_node

    def _layered_get(self, h: bytes) -> bytes | None:
        data = self.nodes.get(h)
        return data if data is not None else self.base.get_node(h)

    def put_nodes(self, nodes: Mapping[bytes, bytes]) -> None:
        self.nodes.update(nodes)
        self.get_node = self._layered_get


class _LatestStateCache:
    """What the tree holds at one root (the latest committed state), as read so far: key -> value or None.

    Filled by reads of that root and moved forward by each committed block's own writes (the exact
    difference between the parent's state and the block's), so it always equals a walk of the tree at
    `root`. A lookup for any other root misses. Thread-safe: one lock guards the root and the map, so
    a reader never takes a value of one root for another.

    With `flat` (a reader of the latest state through the database's st/ index) a key not in memory is read there
    while `root` is the database's latest. `moving` (called before a block's batch is written) clears
    `root` until `advance` and counts the move; the index is read outside the lock (lookups of several
    threads run at once, and a commit never waits for them), and its answer is used only if no move
    began meanwhile, so no reader takes a half-moved or moved st/ for either root. (A LevelDB batch is
    seen whole or not at all by a lookup, but the count alone already rules out any overlap.)
    """

    __slots__ = ("data", "flat", "lock", "moves", "root")

    def __init__(self, flat: Callable[[bytes], bytes | None] | None = None) -> None:
        self.lock = threading.Lock()
        self.root: bytes | None = None
        self.data: dict[bytes, bytes | None] = {}
        self.flat = flat
        self.moves = 0

    def get(self, root: bytes, key: bytes) -> object:
        with self.lock:
            if root != self.root:
                return _MISSING
            value = self.data.get(key, _MISSING)
            if value is not _MISSING or self.flat is None:
                return value
            moves = self.moves
        value = self.flat(FLAT_STATE_PREFIX + key)
        with self.lock:
            if self.moves != moves:
                return _MISSING  # a block's batch may have been written during the lookup
            if len(self.data) >= _STATE_CACHE_SIZE:
                self.data.clear()
            self.data[key] = value
            return value

    def start(self, root: bytes) -> None:
        """The latest committed state is `root` (on opening the store)."""
        with self.lock:
            self.root, self.data = root, {}
            self.moves += 1

    def moving(self) -> bytes | None:
        """A block's batch is about to be written: no reads at any root until `advance`."""
        with self.lock:
            root, self.root = self.root, None
            self.moves += 1
            return root

    def put(self, root: bytes, key: bytes, value: bytes | None) -> None:
        with self.lock:
            if root != self.root:
                return
            if len(self.data) >= _STATE_CACHE_SIZE:
                self.data.clear()
            self.data[key] = value

    def advance(self, was: bytes | None, old_root: bytes, new_root: bytes,
                writes: dict[bytes, bytes | None]) -> None:
        """The state moved from `old_root` to `new_root` by `writes` (a committed block's); `was` is
        what `moving` returned."""
        with self.lock:
            if was != old_root or self.root is not None or len(self.data) + len(writes) > _STATE_CACHE_SIZE:
                self.data = {}
            self.data.update(writes)
            self.root = new_root


class _TreeState:
    """A read-only StateView of the tree at one root, remembering what it read (the root never moves)."""

    __slots__ = ("cache", "latest", "root", "tree")

    def __init__(self, tree: SparseMerkleTree, root: bytes, latest: _LatestStateCache | None = None) -> None:
        self.tree = tree
        self.root = root
        self.latest = latest
        self.cache: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.cache:
            return self.cache[key]
        if self.latest is not None:
            value = _read_through(self.latest, self.tree, self.root, key)
        else:
            value = self.tree.get(self.root, key)
        self.cache[key] = value
        return value

    def set(self, key: bytes, value: bytes | None) -> None:
        raise TypeError("the committed state is read-only; write through an Overlay")


def _read_through(latest: _LatestStateCache, tree: SparseMerkleTree, root: bytes, key: bytes) -> bytes | None:
    hit = latest.get(root, key)
    if hit is not _MISSING:
        return hit  # type: ignore[return-value]
    value = tree.get(root, key)
    latest.put(root, key, value)
    return value


def _tx_root(tx_ids: list[bytes]) -> bytes:
    """ler.block.tx_root, in C where storage/_smt_native.c is built (every block made or checked needs one)."""
    native = smt._native
    return native.merkle_root(tx_ids) if native is not None else tx_root(tx_ids)


#: LevelDB's write buffer (its default is 4 MB; see ChainStore.__init__).
DEFAULT_WRITE_BUFFER_MB = 32


def write_buffer_mb_for(node_key: bytes, authorities: Sequence[bytes]) -> int:
    """The write buffer of the node with public key `node_key`, staggered across `authorities`.

    Every node writes the same blocks, so with equal buffers all of them would fill their buffer, flush
    it and compact the levels below at the same height, and a block needs a quorum of them. Spread over
    24 to 48 MB by the node's place among the authorities (by its key's hash if it is not one of them),
    the nodes do this at different heights: one node is busy compacting while the quorum goes on.
    """
    ranked = sorted(authorities)
    if node_key in ranked:
        slot, slots = ranked.index(node_key), len(ranked)
    else:
        slot, slots = hashlib.sha256(node_key).digest()[0], 256
    return 24 + 24 * slot // slots


class ChainStore:
    """The node's durable chain: open one per data folder (LevelDB allows one process at a time)."""

    def __init__(self, path: str | os.PathLike[str], genesis: Genesis,
                 write_buffer_mb: int = DEFAULT_WRITE_BUFFER_MB) -> None:
        self.genesis = genesis
        self._genesis_hash = genesis.hash
        self._path = Path(path)
        self._write_lock = threading.Lock()
        self._headers: OrderedDict[int, Header] = OrderedDict()
        try:
            self._path.mkdir(parents=True, exist_ok=True)
            orphaned = _orphaned_db_files(self._path)
            if orphaned:
                shown = ", ".join(orphaned[:3]) + (f" and {len(orphaned) - 3} more" if len(orphaned) > 3 else "")
                raise StoreError(f"the database in {self._path} is corrupt: its CURRENT file is missing but it "
                                 f"holds database files ({shown}); nothing was changed: restore the folder "
                                 "from a backup, or delete it to sync the chain again from peers")
            # The tables' Bloom filters spare a lookup of an absent key (a new transaction id, a new
            # record's state key) a read of each table, though not the memtable's search (the key
            # filter below spares most such lookups LevelDB altogether). No compression: nearly all
            # that is stored is hashes, keys and signatures, which do not compress, and trying to was
            # a large part of a busy node's CPU. (Blocks written compressed earlier still read.)
            # A write buffer of tens of MB (LevelDB's default is 4 MB): most keys written are hashes
            # (state tree nodes, transaction ids), spread over the whole key space, so every flushed
            # table overlaps all of the next level and is merged into it; fewer, larger flushes cut that
            # background work to less than half under sustained load (see docs/PERFORMANCE.md). A node
            # passes its own size (`write_buffer_mb_for`), so that nodes storing the same blocks do
            # not all flush and compact at the same moment.
            db = plyvel.DB(str(self._path), create_if_missing=True, bloom_filter_bits=10, compression=None,
                           lru_cache_size=64 * 1024 * 1024, write_buffer_size=write_buffer_mb * 1024 * 1024,
                           paranoid_checks=True)
        except plyvel.IOError as exc:
            says = _leveldb_says(exc)
            raise StoreError(f"cannot open the data folder {self._path}: {says}{_disk_hint(says)}") from None
        except plyvel.CorruptionError as exc:
            says = _leveldb_says(exc)
            raise StoreError(f"the database in {self._path} is corrupt: {says}{_damage_hint(says)}") from None
        except OSError as exc:
            raise StoreError(f"cannot open the data folder {self._path}: {exc.strerror}") from None
        self._db = _CheckedDB(db, self._path)
        # Keys under tx/ and st/ in memory, so that looking up one never written (a new transaction id,
        # a new record's state key: most lookups under load) skips LevelDB. Every commit adds its keys
        # before writing them; until the keys stored before are all in (`_fill_key_filter`), every
        # lookup reads the database.
        self._absent = KeyFilter()
        self._stop_fill = threading.Event()
        self._filler = threading.Thread(target=self._fill_key_filter, name="key_filter", daemon=True)
        try:
            self._nodes = _DbNodes(self._db)
            self._tree = SparseMerkleTree(self._nodes)
            self._history = HistoryTree(self._db, HISTORY_PREFIX)
            if next(self._db.iterator(include_value=False), None) is None:
                self._write_genesis()
            self._load()
        except BaseException:
            self._db.close()
            raise
        # The keys already stored under tx/ and st/ go into the key filter in a thread of their own.
        self._filler.start()

    # --- opening ------------------------------------------------------------------------------------------
    def _write_genesis(self) -> None:
        """Initialise an empty folder with the genesis state, in one durable batch."""
        state = MemoryState()
        apply_genesis(state, self.genesis)
        staging = _StagingNodes(MemoryNodeStore())
        root = SparseMerkleTree(staging).update_many(EMPTY, dict(state.data))
        staged = StagedWrites(self._db)
        staged.put(META_GENESIS, self._genesis_hash)
        staged.put(META_GENESIS_STATE, root)
        staged.put(META_FLAT_STATE, FLAT_LEAF_HASHES)
        staged.put(META_FLAT_HEIGHT, _h8(0))
        for key, value in state.data.items():
            if value is not None:
                staged.put(FLAT_STATE_PREFIX + key, leaf_hash(key, value))
        staged.put(META_HEIGHT, _h8(0))
        staged.put(_val_key(1), codec.encode(list(self.genesis.validators)))
        for h, data in staging.nodes.items():
            staged.put(NODE_PREFIX + h, data)
        for gi in self.genesis.issuers:
            staged.put(ISSUER_INDEX_PREFIX + gi.did.encode("utf-8"), b"")
        HistoryTree(staged, HISTORY_PREFIX).append(0, self._genesis_hash)
        self._write(staged)

    def _load(self) -> None:
        """Check the folder belongs to this chain and is whole, then cache what every call needs."""
        stored = self._db.get(META_GENESIS)
        if stored is None:
            raise StoreError(f"the database in {self._path} is corrupt: it has data but no meta/genesis")
        if stored != self._genesis_hash:
            raise StoreError(f"this data folder belongs to another chain: it was created for genesis "
                             f"{stored.hex()}, not {self._genesis_hash.hex()} ({self.genesis.chain_id})")
        gstate = self._db.get(META_GENESIS_STATE)
        if gstate is None or len(gstate) != 32:
            raise StoreError(f"the database in {self._path} is corrupt: meta/genesis_state is missing")
        raw_height = self._db.get(META_HEIGHT)
        if raw_height is None or len(raw_height) != 8:
            raise StoreError(f"the database in {self._path} is corrupt: meta/height is missing")
        self._genesis_state: bytes = gstate
        heights: list[int] = []
        sets: list[tuple[bytes, ...]] = []
        for key, value in self._db.iterator(prefix=VALIDATORS_PREFIX):
            try:
                members = codec.decode(value)
                if not isinstance(members, list) or not all(isinstance(k, bytes) for k in members):
                    raise DecodeError("not a list of keys")
            except DecodeError as exc:
                raise StoreError(f"the database in {self._path} is corrupt: {key!r}: {exc}") from None
            heights.append(int.from_bytes(key[len(VALIDATORS_PREFIX):], "big"))
            sets.append(tuple(members))
        if not heights or heights[0] != 1:
            raise StoreError(f"the database in {self._path} is corrupt: the genesis validator set is missing")
        self._val_heights, self._val_sets = heights, sets
        height = int.from_bytes(raw_height, "big")
        latest: Header | None = None
        if height > 0:
            latest = self._read_header(height)
            if latest is None:
                raise StoreError(f"the database in {self._path} is corrupt: "
                                 f"meta/height is {height} but that block is missing")
        self._tip: tuple[int, Header | None] = (height, latest)
        root = latest.state_root if latest is not None else gstate
        if self._db.get(META_FLAT_STATE) != FLAT_LEAF_HASHES or self._db.get(META_FLAT_HEIGHT) != _h8(height):
            self._rebuild_flat(root, height)
        self._latest_state = _LatestStateCache(self._flat_value)
        # Ids with a pending/ entry: a commit deletes just those (most committed transactions came by
        # gossip and have none; deleting absent keys would only leave tombstones in the database).
        self._pending_lock = threading.Lock()
        self._pending_ids: set[bytes] = {
            k[len(PENDING_PREFIX):] for k in self._db.iterator(prefix=PENDING_PREFIX, include_value=False)}
        self._latest_state.start(root)

    def _rebuild_flat(self, root: bytes, height: int) -> None:
        """Write st/ afresh from the tree under `root` (the state after `height`). The marker goes first
        and comes back last, so an interrupted rebuild is simply done again on the next opening."""
        db = self._db
        log.info("event=state_index_rebuild height=%d path=%s", height, self._path)
        started = time.monotonic()
        db.delete(META_FLAT_STATE, sync=True)
        batch, n, keys = db.write_batch(), 0, 0
        try:
            for key in db.iterator(prefix=FLAT_STATE_PREFIX, include_value=False):
                batch.delete(key)
                n += 1
                if n % 10_000 == 0:
                    db.write(batch)
                    batch = db.write_batch()
            for key, leaf in self._tree.leaves(root):
                batch.put(FLAT_STATE_PREFIX + key, leaf)
                n += 1
                keys += 1
                if n % 10_000 == 0:
                    db.write(batch)
                    batch = db.write_batch()
            db.write(batch)
            done = db.write_batch(sync=True)
            done.put(META_FLAT_HEIGHT, _h8(height))
            done.put(META_FLAT_STATE, FLAT_LEAF_HASHES)
            db.write(done)
        except NodeStoreError as exc:
            raise StoreError(f"the state database is corrupt: {exc}") from None
        log.info("event=state_index_rebuilt height=%d keys=%d seconds=%.1f", height, keys,
                 time.monotonic() - started)

    def _flat_value(self, flat_key: bytes) -> bytes | None:
        """The latest value at st/<key> (`flat_key`), by way of the leaf whose hash st/ holds."""
        if not self._absent.may_hold(flat_key):
            return None
        pointer = self._db.get(flat_key)
        if pointer is None:
            return None
        try:
            key, value = self._tree.leaf(pointer)
        except NodeStoreError:
            key = None
        if key != flat_key[len(FLAT_STATE_PREFIX):]:
            raise NodeStoreError(f"{flat_key!r} does not lead to its leaf")
        return value

    def _write(self, staged: StagedWrites, batch: plyvel.WriteBatch | None = None) -> None:
        """One durable batch: after this returns the writes survive a crash; before, none of them exist.

        `batch`: one the caller already filled with other writes (under keys `staged` does not touch)."""
        if batch is None:
            batch = self._db.write_batch(sync=True)
        staged.write_to(batch)
        self._db.write(batch)

    def _fill_key_filter(self) -> None:
        started = time.monotonic()

        def stored() -> Iterator[bytes]:
            for prefix in (TX_PREFIX, FLAT_STATE_PREFIX):
                yield from self._db.iterator(prefix=prefix, include_value=False)
        try:
            if not self._absent.fill(stored(), self._stop_fill):
                return
        except Exception as exc:  # e.g. a damaged table: lookups go on reading the database, which says so
            log.warning("event=key_filter_failed path=%s error=%s", self._path, exc)
            return
        log.info("event=key_filter_ready bytes=%d seconds=%.2f", self._absent.size_bytes,
                 time.monotonic() - started)

    def tell_damage_to(self, callback: Callable[[StoreError], None]) -> None:
        """Have `callback` called with the error of every damage the store finds in its database from now
        on, in the thread that found it (a running node stops on the first: node.daemon)."""
        self._db.on_damage = callback

    def close(self) -> None:
        self._stop_fill.set()
        if self._filler.is_alive():
            self._filler.join()
        self._db.close()

    def __enter__(self) -> ChainStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- chain ----------------------------------------------------------------------------------------------
    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @property
    def height(self) -> int:
        """The last committed height (0 when only genesis is there)."""
        return self._tip[0]

    def genesis_hash(self) -> bytes:
        return self._genesis_hash

    def block(self, h: int) -> Block | None:
        raw = self._db.get(_block_key(h)) if h >= 1 else None
        if raw is None:
            return None
        try:
            return Block.decode(raw)
        except DecodeError as exc:
            raise StoreError(f"stored block {h} is corrupt: {exc}") from None

    def _read_header(self, h: int) -> Header | None:
        cached = self._headers.get(h)
        if cached is not None:
            return cached
        block = self.block(h)
        if block is None:
            return None
        self._remember_header(h, block.header)
        return block.header

    def _remember_header(self, h: int, header: Header) -> None:
        """Committed headers never change, so a bounded cache of them is always right; it spares decoding
        a whole block for every state root, block hash or proof that needs one header."""
        self._headers[h] = header
        while len(self._headers) > _HEADER_CACHE_SIZE:
            self._headers.popitem(last=False)

    def header(self, h: int) -> Header | None:
        if not 1 <= h <= self.height:
            return None
        return self._read_header(h)

    def cert(self, h: int) -> CommitCertificate | None:
        raw = self._db.get(_cert_key(h)) if h >= 1 else None
        if raw is None:
            return None
        try:
            return CommitCertificate.decode(raw)
        except DecodeError as exc:
            raise StoreError(f"stored certificate {h} is corrupt: {exc}") from None

    def block_hash(self, h: int) -> bytes | None:
        """The hash of block h; of the genesis document for h == 0 (what block 1's `prev` names)."""
        if h == 0:
            return self._genesis_hash
        header = self.header(h)
        return header.hash if header is not None else None

    def height_of(self, block_hash: bytes) -> int | None:
        """The height of a committed block by its hash (0 for the genesis hash)."""
        if block_hash == self._genesis_hash:
            return 0
        raw = self._db.get(_block_hash_key(block_hash))
        return int.from_bytes(raw, "big") if raw is not None else None

    def latest_header(self) -> Header | None:
        return self._tip[1]

    def find_tx(self, tx_id: bytes) -> tuple[int, int] | None:
        """Where a committed transaction is: (height, index in its block)."""
        key = TX_PREFIX + tx_id
        if not self._absent.may_hold(key):
            return None
        raw = self._db.get(key)
        if raw is None:
            return None
        try:
            height, index = codec.decode(raw)
            return int(height), int(index)
        except (DecodeError, TypeError, ValueError) as exc:
            raise StoreError(f"stored index of transaction {tx_id.hex()} is corrupt: {exc}") from None

    def get_tx(self, tx_id: bytes) -> Tx | None:
        where = self.find_tx(tx_id)
        if where is None:
            return None
        block = self.block(where[0])
        if block is None or where[1] >= len(block.txs):
            raise StoreError(f"transaction {tx_id.hex()} is indexed at {where} but not stored there")
        return Tx.decode(block.txs[where[1]])

    # --- state ----------------------------------------------------------------------------------------------
    def _check_height(self, h: int) -> None:
        if not 0 <= h <= self.height:
            raise ValueError(f"height {h} is not committed (the latest is {self.height})")

    def state_root(self, h: int) -> bytes:
        """The state root after block h (after genesis for h == 0). ValueError for an uncommitted height."""
        self._check_height(h)
        if h == 0:
            return self._genesis_state
        header = self._read_header(h)
        if header is None:
            raise StoreError(f"the database is corrupt: committed block {h} is missing")
        return header.state_root

    def state_get(self, key: bytes, height: int | None = None) -> bytes | None:
        """The state's value at `key` after block `height` (the latest when None)."""
        latest = self.height
        h = latest if height is None else height
        root = self.state_root(h)
        try:
            if h == latest:
                return _read_through(self._latest_state, self._tree, root, key)
            return self._tree.get(root, key)
        except NodeStoreError as exc:
            raise StoreError(f"the state database is corrupt: {exc}") from None

    def state_view(self, height: int) -> StateView:
        """The state after block `height` as a read-only StateView (a block committed meanwhile does not
        move it): for checking a batch of transactions against one state. Keys read are kept for the
        view's life; reads of the latest state go through the latest-state cache."""
        return _TreeState(self._tree, self.state_root(height), self._latest_state)

    def prove_state(self, key: bytes, height: int) -> StateProof:
        """A proof of what the state holds at `key` under header(height).state_root (genesis root for 0)."""
        root = self.state_root(height)
        try:
            return self._tree.prove(root, key)
        except NodeStoreError as exc:
            raise StoreError(f"the state database is corrupt: {exc}") from None

    def _state_entry(self, cls: type[_W], key: bytes, height: int | None, what: str) -> _W | None:
        raw = self.state_get(key, height)
        if raw is None:
            return None
        try:
            return cls.decode(raw)
        except DecodeError as exc:
            raise StoreError(f"stored {what} is corrupt: {exc}") from None

    def get_record(self, record_id: bytes, height: int | None = None) -> RecordEntry | None:
        return self._state_entry(RecordEntry, record_key(record_id), height, "record")

    def get_issuer(self, did: str, height: int | None = None) -> IssuerEntry | None:
        return self._state_entry(IssuerEntry, issuer_key(did), height, "issuer")

    def get_authorities(self, height: int | None = None) -> AuthoritySet:
        aset = self._state_entry(AuthoritySet, authorities_key(), height, "authority set")
        if aset is None:
            raise StoreError("the database is corrupt: the state has no authority set")
        return aset

    def get_endorsement(self, record_id: bytes, endorser: bytes,
                        height: int | None = None) -> EndorsementEntry | None:
        return self._state_entry(EndorsementEntry, endorsement_key(record_id, endorser), height,
                                 "endorsement")

    # --- indexes --------------------------------------------------------------------------------------------
    def list_issuers(self) -> list[IssuerEntry]:
        """Every issuer the state has ever held (any standing), as it is now, in did order."""
        out = []
        for key in self._db.iterator(prefix=ISSUER_INDEX_PREFIX, include_value=False):
            entry = self.get_issuer(key[len(ISSUER_INDEX_PREFIX):].decode("utf-8"))
            if entry is not None:
                out.append(entry)
        return out

    def _records_by(self, prefix: bytes, limit: int, after: bytes | None) -> list[bytes]:
        if limit <= 0:
            return []
        stop = prefix[:-1] + b"\x01"  # just past every key under prefix (which ends in \x00)
        start = prefix
        include_start = True
        if after is not None:
            entry = self.get_record(after)
            if entry is None:
                raise ValueError(f"no record {after.hex()} to continue after")
            start = prefix + _h8(entry.anchored) + after
            include_start = False
        out: list[bytes] = []
        for key in self._db.iterator(start=start, stop=stop, include_start=include_start,
                                     include_value=False):
            out.append(key[len(prefix) + 8:])
            if len(out) >= limit:
                break
        return out

    def records_by_issuer(self, did: str, limit: int = 100, after: bytes | None = None) -> list[bytes]:
        """Ids of records anchored in `did`'s name, by anchoring height (by record id within a block).

        `after` continues a listing after that record id.
        """
        return self._records_by(_by_issuer_prefix(did), limit, after)

    def records_by_holder(self, did: str, limit: int = 100, after: bytes | None = None) -> list[bytes]:
        """Ids of records whose holder is `did`, ordered and continued as in `records_by_issuer`."""
        return self._records_by(_by_holder_prefix(did), limit, after)

    def endorsements(self, record_id: bytes) -> list[EndorsementEntry]:
        """The latest state's endorsements of a record, in endorser-key order."""
        prefix = ENDORSEMENT_INDEX_PREFIX + record_id
        out = []
        for key in self._db.iterator(prefix=prefix, include_value=False):
            entry = self.get_endorsement(record_id, key[len(prefix):])
            if entry is not None:
                out.append(entry)
        return out

    def proposals(self) -> list[Proposal]:
        """The governance proposals open in the latest state (voted for, not yet executed), by action id."""
        out = []
        for key in self._db.iterator(prefix=PROPOSAL_INDEX_PREFIX, include_value=False):
            entry = self._state_entry(Proposal, proposal_key(key[len(PROPOSAL_INDEX_PREFIX):]), None, "proposal")
            if entry is not None:
                out.append(entry)
        return out

    # --- validators -----------------------------------------------------------------------------------------
    def validators(self, h: int) -> tuple[bytes, ...]:
        """The validator keys (ascending) of height h >= 1; known up to height + 2."""
        if not 1 <= h <= self.height + 2:
            raise ValueError(f"the validators of height {h} are not known yet "
                             f"(the latest height is {self.height})")
        i = bisect.bisect_right(self._val_heights, h) - 1
        return self._val_sets[i]

    def validator_change_heights(self, upto: int) -> list[int]:
        """Heights h in 2..upto where validators(h) != validators(h - 1): the steps a light client checks."""
        end = bisect.bisect_right(self._val_heights, upto)
        return [h for h in self._val_heights[:end] if h >= 2]

    # --- history and tx proofs ------------------------------------------------------------------------------
    def _history_size_ok(self, size: int) -> None:
        # Leaves 0..height are stored (genesis, then one per committed block).
        if not 0 <= size <= self.height + 1:
            raise ValueError(f"the history tree has {self.height + 1} leaves, not {size}")

    def history_root(self, size: int) -> bytes:
        """MTH over [genesis hash, block 1 hash, ..., block size-1 hash]: header(size).history_root."""
        self._history_size_ok(size)
        try:
            return self._history.root(size)
        except HistoryError as exc:
            raise StoreError(f"the history tree is corrupt: {exc}") from None

    def history_inclusion(self, index: int, size: int) -> list[bytes]:
        """Audit path of leaf `index` (block_hash(index)) in history_root(size)."""
        self._history_size_ok(size)
        try:
            return self._history.inclusion_proof(index, size)
        except HistoryError as exc:
            raise StoreError(f"the history tree is corrupt: {exc}") from None

    def history_consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof from history_root(old_size) to history_root(new_size)."""
        self._history_size_ok(new_size)
        try:
            return self._history.consistency_proof(old_size, new_size)
        except HistoryError as exc:
            raise StoreError(f"the history tree is corrupt: {exc}") from None

    def tx_inclusion(self, h: int, index: int) -> list[bytes]:
        """Audit path of the tx id at `index` in block h's tx_root (leaves are the tx ids)."""
        block = self.block(h)
        if block is None:
            raise ValueError(f"no committed block at height {h}")
        return inclusion_proof([Tx.decode(raw).tx_id for raw in block.txs], index)

    # --- building and checking blocks -----------------------------------------------------------------------
    def execute(self, txs: Sequence[Tx], time: int, *, drop_invalid: bool) -> ExecutionResult:
        """Apply `txs` (signatures already checked) to the latest state as block height + 1 at `time`.

        Each transaction runs in its own overlay, so a refused one leaves no trace. With drop_invalid the
        refused ones are returned in `rejected`; without, the first refusal raises InvalidBlock. Nothing is
        written to the database: the result carries every write for `commit_block`.
        """
        return self._execute(txs, time, drop_invalid, full=None)

    def _execute(self, txs: Sequence[Tx], time: int, drop_invalid: bool,
                 full: Callable[[Tx], bool] | None) -> ExecutionResult:
        """`execute`, stopping before the first tx for which `full` says the block has no room left."""
        height = self.height + 1
        root = self.state_root(self.height)
        block_state = Overlay(_TreeState(self._tree, root, self._latest_state))
        in_block: set[bytes] = set()
        db, may_hold = self._db, self._absent.may_hold

        def seen(tx_id: bytes) -> bool:
            if tx_id in in_block:
                return True
            key = TX_PREFIX + tx_id
            return may_hold(key) and db.get(key) is not None

        ctx = Context(chain_id=self.chain_id, height=height, time=time, seen=seen)
        applied: list[Tx] = []
        rejected: list[tuple[Tx, RuleError]] = []
        try:
            for i, tx in enumerate(txs):
                if full is not None and full(tx):
                    break
                tx_state = Overlay(block_state)
                try:
                    apply_tx(tx_state, ctx, tx)
                except RuleError as exc:
                    if drop_invalid:
                        rejected.append((tx, exc))
                        continue
                    raise InvalidBlock(exc.rule,
                                       f"transaction {i} ({tx.tx_id.hex()}): {exc.reason}") from None
                tx_state.commit()
                in_block.add(tx.tx_id)
                applied.append(tx)
            authorities_after = get_authorities(block_state).keys
            staging = _StagingNodes(self._nodes)
            new_root = SparseMerkleTree(staging).update_many(root, block_state.writes)
        except NodeStoreError as exc:
            raise StoreError(f"the state database is corrupt: {exc}") from None
        return ExecutionResult(height=height, time=time, state_root=new_root, applied=applied,
                               rejected=rejected, state_writes=dict(block_state.writes),
                               node_writes=staging.nodes, authorities_after=authorities_after)

    def _parent_time(self, h: int) -> int:
        if h == 1:
            return self.genesis.genesis_time
        parent = self.header(h - 1)
        if parent is None:
            raise StoreError(f"the database is corrupt: committed block {h - 1} is missing")
        return parent.time

    def make_block(self, txs: Sequence[Tx], time: int, round_: int, proposer: bytes,
                   last_cert: CommitCertificate | None) -> tuple[Block, ExecutionResult]:
        """A proposal for height + 1 holding the transactions of `txs` that apply, in their order.

        Those a rule refuses are returned in the result's `rejected`. The block stops short of
        MAX_BLOCK_TXS transactions or MAX_BLOCK_TX_BYTES of them, so every peer can decode it; the
        transactions after that point are neither applied nor rejected and wait for a later block.
        """
        count = size = 0

        def full(tx: Tx) -> bool:
            nonlocal count, size
            if count + 1 > MAX_BLOCK_TXS or size + len(tx.raw) + _TX_OVERHEAD > MAX_BLOCK_TX_BYTES:
                return True
            count += 1
            size += len(tx.raw) + _TX_OVERHEAD
            return False

        result = self._execute(txs, time, drop_invalid=True, full=full)
        h = result.height
        prev = self.block_hash(h - 1)
        assert prev is not None  # h - 1 is committed (or genesis)
        header = Header(
            chain=self.chain_id, height=h, round=round_, time=time, prev=prev,
            tx_count=len(result.applied), tx_root=_tx_root([tx.tx_id for tx in result.applied]),
            state_root=result.state_root, history_root=self.history_root(h),
            validators_hash=validators_hash(self.validators(h)),
            next_validators_hash=validators_hash(self.validators(h + 1)), proposer=proposer)
        return Block(header=header, txs=tuple(tx.raw for tx in result.applied), last_cert=last_cert), result

    def validate_block(self, block: Block, verified: Container[bytes] = frozenset(),
                       known: Callable[[bytes], Tx | None] | None = None,
                       before_checks: Callable[[list[bytes]], None] | None = None,
                       signatures_checked: Callable[[list[bytes]], None] | None = None) -> ExecutionResult:
        """Check `block` as the next block of this chain; InvalidBlock names the first rule it breaks.

        `verified` holds tx ids whose signatures this node already checked (e.g. in its mempool): each
        signature is verified once per node. `known` (e.g. the mempool's `get`) gives an already decoded
        transaction by id: one whose bytes equal the block's is used as is instead of decoding them again.
        `before_checks` is given the ids not in `verified` before their signatures are checked (it may wait
        for another check of them to end); `signatures_checked` is told each one this call checked itself,
        as soon as it passed.
        """
        hd = block.header
        h = self.height + 1

        def expect(name: str, got: object, want: object) -> None:
            if got != want:
                raise InvalidBlock(f"header.{name}", f"is {_show(got)}, expected {_show(want)}")

        # Every field but `round` is determined by the chain and the block's content; the round is the
        # proposer's, and the certificate that commits the block binds it.
        expect("chain", hd.chain, self.chain_id)
        expect("height", hd.height, h)
        expect("prev", hd.prev, self.block_hash(h - 1))
        parent_time = self._parent_time(h)
        if hd.time <= parent_time:
            raise InvalidBlock("header.time", f"{hd.time} is not later than the parent's time {parent_time}")
        validators = self.validators(h)
        if hd.proposer not in validators:
            raise InvalidBlock("header.proposer", f"{hd.proposer.hex()} is not a validator of height {h}")
        expect("validators_hash", hd.validators_hash, validators_hash(validators))
        expect("next_validators_hash", hd.next_validators_hash, validators_hash(self.validators(h + 1)))
        expect("history_root", hd.history_root, self.history_root(h))
        expect("tx_count", hd.tx_count, len(block.txs))
        if len(block.txs) > MAX_BLOCK_TXS:
            raise InvalidBlock("block.size", f"{len(block.txs)} transactions; at most {MAX_BLOCK_TXS}")
        tx_bytes = sum(len(raw) + _TX_OVERHEAD for raw in block.txs)
        if tx_bytes > MAX_BLOCK_TX_BYTES:
            raise InvalidBlock("block.size", f"{tx_bytes} bytes of transactions; at most {MAX_BLOCK_TX_BYTES}")
        self._check_last_cert(block.last_cert, h)

        txs: list[Tx] = []
        ids: set[bytes] = set()
        for i, raw in enumerate(block.txs):
            tx_id = sha256(raw)
            cached = known(tx_id) if known is not None else None
            if cached is not None and cached.raw == raw:
                tx = cached  # the same bytes, decoded (strictly) when they entered the mempool
            else:
                try:
                    tx = Tx.decode(raw, tx_id)
                except DecodeError as exc:
                    raise InvalidBlock("tx.decode", f"transaction {i}: {exc}") from None
            if tx.tx_id in ids:
                raise InvalidBlock("tx.duplicate", f"transaction {i} ({tx.tx_id.hex()}) appears twice")
            ids.add(tx.tx_id)
            txs.append(tx)
        expect("tx_root", hd.tx_root, _tx_root([tx.tx_id for tx in txs]))
        unchecked = [i for i, tx in enumerate(txs) if tx.tx_id not in verified]
        if unchecked and before_checks is not None:
            before_checks([txs[i].tx_id for i in unchecked])  # e.g. let a check already under way end
        for i in unchecked:
            tx = txs[i]
            if tx.tx_id in verified:  # checked meanwhile by another thread
                continue
            try:
                check_tx(tx, self.chain_id)
            except RuleError as exc:
                raise InvalidBlock(exc.rule, f"transaction {i} ({tx.tx_id.hex()}): {exc.reason}") from None
            if signatures_checked is not None:
                signatures_checked([tx.tx_id])  # at once: another thread may be about to check it too
        result = self.execute(txs, hd.time, drop_invalid=False)
        expect("state_root", hd.state_root, result.state_root)
        return result

    def _check_last_cert(self, cert: CommitCertificate | None, h: int) -> None:
        if h == 1:
            if cert is not None:
                raise InvalidBlock("block.last_cert", "block 1 carries no parent certificate")
            return
        if cert is None:
            raise InvalidBlock("block.last_cert", f"block {h} lacks the certificate of block {h - 1}")
        if cert.height != h - 1:
            raise InvalidBlock("block.last_cert", f"certificate is for height {cert.height}, not {h - 1}")
        if cert.block != self.block_hash(h - 1):
            raise InvalidBlock("block.last_cert", f"certificate is for another block than block {h - 1}")
        try:
            cert.verify(self.chain_id, self.validators(h - 1))
        except ProofError as exc:
            raise InvalidBlock("block.last_cert", str(exc)) from None

    # --- committing -----------------------------------------------------------------------------------------
    def commit_block(self, block: Block, cert: CommitCertificate,
                     result: ExecutionResult | None = None) -> None:
        """Make `block` durable as height + 1, with its certificate, in one synced write batch.

        `result` is the block's validate_block result when the caller has it; otherwise the block is
        validated here (a block is never stored unchecked).
        """
        with self._write_lock:
            self._commit(block, cert, result)

    def _commit(self, block: Block, cert: CommitCertificate, result: ExecutionResult | None) -> None:
        h = self.height + 1
        block_hash = block.hash
        if block.header.height != h:
            raise StoreError(f"out-of-order commit: block {block.header.height} given, the next is {h}")
        if cert.height != h:
            raise StoreError(f"the certificate is for height {cert.height}, not {h}")
        if cert.block != block_hash:
            raise StoreError(f"the certificate is for block {cert.block.hex()}, not {block_hash.hex()}")
        try:
            cert.verify(self.chain_id, self.validators(h))
        except ProofError as exc:
            raise StoreError(f"certificate of block {h} refused: {exc}") from None
        if result is None:
            result = self.validate_block(block)
        elif (result.height != h or result.state_root != block.header.state_root
              or [tx.raw for tx in result.applied] != list(block.txs)):
            raise StoreError(f"the execution result given is not that of block {h}")

        # The many keys no other write of this batch touches (about ten per transaction) go straight
        # into the batch; the rest are staged, since the history tree reads what it writes.
        batch = self._db.write_batch(sync=True)
        put = batch.put
        staged = StagedWrites(self._db)
        put(_block_key(h), block.encode())
        put(_cert_key(h), cert.encode())
        put(_block_hash_key(block_hash), _h8(h))
        leaves: dict[bytes, bytes] = {}  # state key -> the hash of its leaf written by this block
        for node_hash, data in result.node_writes.items():
            put(NODE_PREFIX + node_hash, data)
            if data[0] == LEAF_TAG:
                leaves[data[1:33]] = node_hash
        pending = self._pending_ids
        done_pending: list[bytes] = []
        new_keys: list[bytes] = []  # for the key filter, before the batch is written
        for index, tx in enumerate(result.applied):
            tx_key = TX_PREFIX + tx.tx_id
            new_keys.append(tx_key)
            put(tx_key, packb([h, index]))  # two integers: canonical as packed
            if tx.tx_id in pending:
                batch.delete(PENDING_PREFIX + tx.tx_id)
                done_pending.append(tx.tx_id)
            self._index_tx(batch, tx, h, result)
        HistoryTree(staged, HISTORY_PREFIX).append(h, block_hash)
        new_validators = tuple(sorted(result.authorities_after))
        changes_validators = new_validators != self.validators(h + 1)
        if changes_validators:
            staged.put(_val_key(h + 2), codec.encode(list(new_validators)))
        staged.put(META_HEIGHT, _h8(h))
        for key, value in result.state_writes.items():
            if value is None:
                batch.delete(FLAT_STATE_PREFIX + key)
            else:
                # A value the key held already wrote no leaf: its hash is the one stored before.
                leaf = leaves.get(key)
                flat_key = FLAT_STATE_PREFIX + key
                new_keys.append(flat_key)
                put(flat_key, leaf if leaf is not None else leaf_hash(key, value))
        put(META_FLAT_HEIGHT, _h8(h))
        old_root = self.state_root(h - 1)
        # Should the write fail, the cache stays without a root: reads walk the tree, which is right
        # whatever part of the batch the database kept.
        was = self._latest_state.moving()
        self._absent.add_many(new_keys)
        self._write(staged, batch)
        self._latest_state.advance(was, old_root, block.header.state_root, result.state_writes)
        self._nodes.remember(result.node_writes)
        with self._pending_lock:
            pending.difference_update(done_pending)

        # The batch is durable: only now may readers see the new height.
        if changes_validators:
            self._val_heights.append(h + 2)
            self._val_sets.append(new_validators)
        self._remember_header(h, block.header)
        self._tip = (h, block.header)

    @staticmethod
    def _index_tx(batch: plyvel.WriteBatch, tx: Tx, h: int, result: ExecutionResult) -> None:
        """The secondary indexes a transaction adds (they are conveniences; the state is authoritative)."""
        body = tx.body
        if isinstance(body, RecordAnchor):
            suffix = _h8(h) + body.record
            batch.put(_by_issuer_prefix(body.issuer) + suffix, b"")
            batch.put(_by_holder_prefix(body.holder) + suffix, b"")
        elif isinstance(body, RecordEndorse):
            batch.put(ENDORSEMENT_INDEX_PREFIX + body.record + tx.signer, b"")
        elif isinstance(body, GovVote | IssuerRotate):
            did = body.action.subject if isinstance(body, GovVote) else body.issuer
            if result.state_writes.get(issuer_key(did)) is not None:
                batch.put(ISSUER_INDEX_PREFIX + did.encode("utf-8"), b"")
        if isinstance(body, GovVote):
            # The block's final write decides: a proposal opened and executed in one block never shows.
            aid = body.action.action_id
            pkey = proposal_key(aid)
            if pkey in result.state_writes:
                if result.state_writes[pkey] is None:
                    batch.delete(PROPOSAL_INDEX_PREFIX + aid)
                else:
                    batch.put(PROPOSAL_INDEX_PREFIX + aid, b"")

    # --- pending transactions -------------------------------------------------------------------------------
    def add_pending(self, raws: Sequence[tuple[bytes, bytes]]) -> None:
        """Remember accepted, uncommitted transactions (tx id, raw) so a restart does not lose them."""
        if not raws:
            return
        staged = StagedWrites(self._db)
        for tx_id, raw in raws:
            staged.put(PENDING_PREFIX + tx_id, raw)
        # (Should the block holding one commit before this write lands, its entry stays behind;
        # reload_pending drops such entries on the next start, finding them committed.)
        with self._pending_lock:
            self._pending_ids.update(tx_id for tx_id, _ in raws)
        self._write(staged)

    def remove_pending(self, tx_ids: Sequence[bytes]) -> None:
        if not tx_ids:
            return
        staged = StagedWrites(self._db)
        for tx_id in tx_ids:
            staged.delete(PENDING_PREFIX + tx_id)
        self._write(staged)
        with self._pending_lock:
            self._pending_ids.difference_update(tx_ids)

    def pending_ids(self) -> frozenset[bytes]:
        """Ids of the transactions this node acknowledged and has not seen committed."""
        with self._pending_lock:
            return frozenset(self._pending_ids)

    def pending(self) -> list[bytes]:
        """Raw transactions accepted before a restart and not yet committed (in tx id order)."""
        return [raw for _, raw in self._db.iterator(prefix=PENDING_PREFIX)]


    # --- node bookkeeping outside blocks --------------------------------------------------------------------
    def put_meta(self, key: bytes, value: bytes) -> None:
        """One synced write of a consensus/ or evidence/ key (what a validator signed, equivocation evidence).

        Durable when this returns: a validator writes what it signed here before it sends it.
        """
        if not key.startswith(META_PREFIXES):
            raise ValueError(f"put_meta is only for keys under {META_PREFIXES!r}, not {key!r}")
        self._db.put(key, value, sync=True)

    def put_meta_many(self, items: dict[bytes, bytes]) -> None:
        """Several put_meta writes in one synced batch (all durable, or none)."""
        for key in items:
            if not key.startswith(META_PREFIXES):
                raise ValueError(f"put_meta is only for keys under {META_PREFIXES!r}, not {key!r}")
        batch = self._db.write_batch(sync=True)
        for key, value in items.items():
            batch.put(key, value)
        self._db.write(batch)

    def get_meta(self, key: bytes) -> bytes | None:
        if not key.startswith(META_PREFIXES):
            raise ValueError(f"get_meta is only for keys under {META_PREFIXES!r}, not {key!r}")
        value: bytes | None = self._db.get(key)
        return value

    def list_meta(self, prefix: bytes, limit: int, reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) pairs under a consensus/ or evidence/ prefix, in key order."""
        if not prefix.startswith(META_PREFIXES):
            raise ValueError(f"list_meta is only for prefixes under {META_PREFIXES!r}, not {prefix!r}")
        out: list[tuple[bytes, bytes]] = []
        for key, value in self._db.iterator(prefix=prefix, reverse=reverse):
            out.append((key, value))
            if len(out) >= limit:
                break
        return out

    def raw_block(self, h: int) -> bytes | None:
        """Block h's stored canonical bytes (what block sync serves without decoding it)."""
        raw: bytes | None = self._db.get(_block_key(h)) if h >= 1 else None
        return raw

    def raw_cert(self, h: int) -> bytes | None:
        """Block h's stored certificate bytes."""
        raw: bytes | None = self._db.get(_cert_key(h)) if h >= 1 else None
        return raw
