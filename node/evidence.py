"""Evidence of equivocation: two validly signed, conflicting consensus messages of one validator for one
(height, round, step). One such pair proves the fault on its own, to anyone holding the chain's
validator sets, without trusting whoever relays it.

A node stores each piece under `evidence/` + height (8 bytes) + round (4) + slot (1: 0 for proposals,
the vote type for votes) + the validator's key, serves them at GET /v1/evidence, and gossips each piece
it did not have to every peer (the envelope's optional `evidence` list, node/peers.py), so that every
node, observers too, reports what any of them saw, and not only the node that happened to receive both
messages. A node takes a piece only after checking it here; it keeps at most EVIDENCE_PER_VALIDATOR
pieces per validator and height, as the consensus engine reports at most that many.

The stored and gossiped form (canonical msgpack):

    {"kind": "vote", "a": Vote bytes, "b": Vote bytes}
    {"kind": "proposal", "a": signed, "b": signed}
        signed = {"height", "round", "pol_round", "block": the block's hash, "proposer", "sig"}: what a
                 proposal's signature covers, without the block itself (two blocks would make a piece
                 up to twice the largest message, and the fault is in the signatures alone)

Pieces stored by earlier versions held the two whole proposals; `to_json` reads both forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus import Proposal
from consensus.engine import EVIDENCE_PER_VALIDATOR, ConflictingProposals, Evidence
from consensus.messages import check_proposal_fields
from ler import codec, keys
from ler.block import Block, Vote
from ler.errors import DecodeError, LerError

EVIDENCE_PREFIX = b"evidence/"
#: The largest piece: two votes or two signed proposal headers, with room to spare.
MAX_PIECE_BYTES = 4096
_SIGNED_FIELDS = frozenset({"height", "round", "pol_round", "block", "proposer", "sig"})
_STEPS = {0: "propose", 1: "prevote", 2: "precommit"}


class BadEvidence(ValueError):
    """A piece of evidence that proves nothing (malformed, not conflicting, or not validly signed)."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One checked (or locally found) piece: where it is stored and its bytes."""

    kind: str  # "vote" or "proposal"
    height: int
    round: int
    slot: int
    who: bytes
    raw: bytes

    @property
    def key(self) -> bytes:
        return key_of(self.height, self.round, self.slot, self.who)

    @property
    def step(self) -> str:
        return _STEPS.get(self.slot, str(self.slot))


def key_of(height: int, round_: int, slot: int, who: bytes) -> bytes:
    return EVIDENCE_PREFIX + height.to_bytes(8, "big") + round_.to_bytes(4, "big") + bytes([slot]) + who


def height_prefix(height: int) -> bytes:
    return EVIDENCE_PREFIX + height.to_bytes(8, "big")


def _signed_proposal(p: Proposal) -> dict[str, Any]:
    return {**Proposal.payload(p.height, p.round, p.pol_round, p.block_hash), "proposer": p.proposer,
            "sig": p.sig}


def piece_of(found: Evidence | ConflictingProposals) -> Piece:
    """The piece for what this node's consensus engine found."""
    if isinstance(found, Evidence):
        a, b = found.vote_a, found.vote_b
        raw = codec.encode({"kind": "vote", "a": a.encode(), "b": b.encode()})
        return Piece("vote", a.height, a.round, a.type, a.validator, raw)
    p, q = found.proposal_a, found.proposal_b
    raw = codec.encode({"kind": "proposal", "a": _signed_proposal(p), "b": _signed_proposal(q)})
    return Piece("proposal", p.height, p.round, 0, p.proposer, raw)


def check(raw: bytes, chain_id: str, validators: Callable[[int], tuple[bytes, ...]]) -> Piece:
    """A piece from a peer, checked: both messages well formed and validly signed by one validator of
    their height (`validators(h)`, ValueError if not known), for one (height, round, step), and in
    conflict. BadEvidence saying why otherwise."""
    if len(raw) > MAX_PIECE_BYTES:
        raise BadEvidence(f"larger than {MAX_PIECE_BYTES} bytes")
    try:
        obj = codec.decode(raw, MAX_PIECE_BYTES)
    except DecodeError as exc:
        raise BadEvidence(f"malformed: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"kind", "a", "b"} or obj["kind"] not in ("vote", "proposal"):
        raise BadEvidence('a piece is a map of exactly kind ("vote" or "proposal"), a and b')
    if obj["kind"] == "vote":
        piece = _check_votes(obj, raw, chain_id)
    else:
        piece = _check_proposals(obj, raw, chain_id)
    try:
        members = validators(piece.height)
    except ValueError as exc:
        raise BadEvidence(str(exc)) from None
    if piece.who not in members:
        raise BadEvidence(f"{keys.did_from_public_key(piece.who)} is no validator of height {piece.height}")
    if piece.kind == "proposal" and members[(piece.height + piece.round) % len(members)] != piece.who:
        raise BadEvidence(f"{keys.did_from_public_key(piece.who)} is not the proposer of height "
                          f"{piece.height}, round {piece.round}")
    return piece


def _check_votes(obj: dict[str, Any], raw: bytes, chain_id: str) -> Piece:
    try:
        a, b = Vote.decode(obj["a"]), Vote.decode(obj["b"])
    except (LerError, ValueError, TypeError) as exc:
        raise BadEvidence(f"a vote: {exc}") from None
    if (a.validator, a.height, a.round, a.type) != (b.validator, b.height, b.round, b.type):
        raise BadEvidence("the two votes are not of one validator, height, round and step")
    if a.block == b.block:
        raise BadEvidence("the two votes are for the same block: no conflict")
    if not (a.signature_valid(chain_id) and b.signature_valid(chain_id)):
        raise BadEvidence("a vote's signature does not verify")
    return Piece("vote", a.height, a.round, a.type, a.validator, raw)


def _signed_fields(obj: Any) -> tuple[int, int, int, bytes, bytes, bytes]:
    if not isinstance(obj, dict) or set(obj) != _SIGNED_FIELDS:
        raise BadEvidence(f"a signed proposal is a map of exactly {', '.join(sorted(_SIGNED_FIELDS))}")
    h, r, pol, block, proposer, sig = (obj[f] for f in ("height", "round", "pol_round", "block", "proposer",
                                                         "sig"))
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (h, r, pol)) or not all(
            isinstance(x, bytes) for x in (block, proposer, sig)) or len(block) != 32:
        raise BadEvidence("a signed proposal's fields have the wrong types or sizes")
    try:
        check_proposal_fields(h, r, pol, proposer, sig)
    except DecodeError as exc:
        raise BadEvidence(str(exc)) from None
    return h, r, pol, block, proposer, sig


def _check_proposals(obj: dict[str, Any], raw: bytes, chain_id: str) -> Piece:
    a, b = _signed_fields(obj["a"]), _signed_fields(obj["b"])
    if (a[0], a[1], a[4]) != (b[0], b[1], b[4]):
        raise BadEvidence("the two proposals are not of one proposer, height and round")
    if a[:4] == b[:4]:
        raise BadEvidence("the two proposals sign the same thing: no conflict")
    for h, r, pol, block, proposer, sig in (a, b):
        if not keys.verify_signed(proposer, "proposal", chain_id, Proposal.payload(h, r, pol, block), sig):
            raise BadEvidence("a proposal's signature does not verify")
    return Piece("proposal", a[0], a[1], 0, a[4], raw)


def to_json(raw_key: bytes, raw_value: bytes) -> dict[str, Any]:
    """One stored piece as JSON: kind, height, round, step, validator, and both signed messages, every
    key given as a did (a vote's own JSON names its validator in hex, which a reader could not match
    against the piece's validator or the proposals' proposer)."""
    obj = codec.decode(raw_value)
    at = len(EVIDENCE_PREFIX)
    height = int.from_bytes(raw_key[at:at + 8], "big")
    round_ = int.from_bytes(raw_key[at + 8:at + 12], "big")
    if obj["kind"] == "vote":
        a, b = Vote.decode(obj["a"]), Vote.decode(obj["b"])
        msgs = [{**v.to_json(), "validator": keys.did_from_public_key(v.validator)} for v in (a, b)]
        who, step = a.validator, _STEPS.get(a.type, str(a.type))
    else:
        signed: list[dict[str, Any]] = []
        for m in (obj["a"], obj["b"]):
            if isinstance(m, bytes):  # stored by an earlier version: the whole proposal
                p = Proposal.decode(m, Block)
                m = _signed_proposal(p)
            h, r, pol, block, proposer, sig = _signed_fields(m)
            signed.append({"height": h, "round": r, "pol_round": pol, "block": block.hex(),
                           "proposer": keys.did_from_public_key(proposer), "sig": sig.hex()})
        who, msgs, step = _signed_fields(m)[4], signed, "propose"
    return {"kind": "duplicate_" + obj["kind"], "height": height, "round": round_, "step": step,
            "validator": keys.did_from_public_key(who), "messages": msgs}


__all__ = ["EVIDENCE_PER_VALIDATOR", "EVIDENCE_PREFIX", "BadEvidence", "Piece", "check", "height_prefix",
           "key_of", "piece_of", "to_json"]
