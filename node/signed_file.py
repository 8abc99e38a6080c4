"""A second record of what a validator last signed, in a file of its own beside the database.

The validator writes its SignedState to LevelDB (`consensus/signed`) before it sends what it signed. A
LevelDB whose write-ahead log was removed or cut short opens without error and without its latest
writes, that record among them: on its own, the node would have forgotten what it signed and could sign
again, in conflict. This file holds the same state, replaced atomically (written to a temporary file,
synced, renamed over the old one, and the folder synced) after the database's write and before anything
is sent. At start the node takes
the later of the two records, so losing either one loses nothing.

Layout: the 8-byte magic "LERSIGN1", the SHA-256 of the payload, then the payload: the canonical
encoding of {"chain": chain id, "key": the validator's public key, "state": the SignedState's encoding}.
A damaged file stops the node with the reason: it is not guessed around. A whole file of another chain or
key (a folder given a new node key, say) says nothing about what this key signed on this chain: it is
left aside with a warning, and replaced at this key's first signature.
"""

from __future__ import annotations

import logging
from pathlib import Path

from consensus import SignedState
from ler import codec
from ler.errors import DecodeError
from ler.files import write_durably
from ler.keys import sha256
from storage.chain import StoreError

MAGIC = b"LERSIGN1"
_HEAD = len(MAGIC) + 32
#: A SignedState encodes in under 200 bytes; anything much larger is not this file.
_MAX_BYTES = 4096

log = logging.getLogger("ler.consensus")


def write_signed_file(path: Path, chain_id: str, key: bytes, state: SignedState) -> None:
    """Replace the file with `state`, durably, or raise StoreError (the node must then stop)."""
    payload = codec.encode({"chain": chain_id, "key": key, "state": state.encode()})
    try:
        write_durably(path, MAGIC + sha256(payload) + payload)
    except OSError as exc:
        raise StoreError(f"could not write {path}: {exc.strerror or exc}") from None


def read_signed_file(path: Path, chain_id: str, key: bytes) -> SignedState | None:
    """The state the file holds, None if there is no file; StoreError if it cannot be trusted."""
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        chain, signer, state = _parse(data)
    except (DecodeError, ValueError) as exc:
        raise StoreError(
            f"{path}, this validator's record of what it last signed, is damaged: {exc}. Its database "
            "keeps a copy: only if that database was neither restored from an older copy nor damaged, "
            "remove the file and start the node again") from None
    if (chain, signer) != (chain_id, key):
        whose = f"chain {chain!r}" if chain != chain_id else "another validator key than this node's"
        log.warning("event=signed_state_not_ours path=%s: it is for %s; left aside", path, whose)
        return None
    return state


def _parse(data: bytes) -> tuple[object, object, SignedState]:
    if len(data) > _MAX_BYTES:
        raise ValueError(f"it is longer than {_MAX_BYTES} bytes")
    if len(data) < _HEAD or not data.startswith(MAGIC):
        raise ValueError("it does not start as this file does")
    payload = data[_HEAD:]
    if sha256(payload) != data[len(MAGIC):_HEAD]:
        raise ValueError("its checksum does not match its contents")
    doc = codec.decode(payload)
    if not isinstance(doc, dict) or set(doc) != {"chain", "key", "state"}:
        raise ValueError("its contents are not a signed state")
    if not isinstance(doc["state"], bytes):
        raise ValueError("its contents are not a signed state")
    return doc["chain"], doc["key"], SignedState.decode(doc["state"])
