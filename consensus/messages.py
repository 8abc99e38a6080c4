"""Consensus wire types: the signed Proposal, the SignedState a validator persists, and small helpers.

Votes are `ler.block.Vote` (prevote or precommit, block = None for nil); this module adds what the
ledger layer does not need: the proposal of a round, and the record of the last thing a validator
signed, which is what keeps it from equivocating across a crash.

A Proposal carries an opaque value (a `ler.block.Block` in the node, a tiny stand-in in tests). Its
signature never covers the value's bytes, only its 32-byte `.hash`:

    signing_bytes("proposal", chain_id, {"height", "round", "pol_round", "block": value.hash})

so a proposal can be checked without encoding the block again, and a value is bound to a proposal
only as tightly as its hash commits to its content (the application's `valid()` must check the rest,
e.g. a block's tx_root against its transactions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ler import codec, keys
from ler.block import PRECOMMIT, PREVOTE, Vote
from ler.errors import DecodeError
from ler.keys import KeyPair
from ler.wire import Wire, b32, limit

MAX_ROUND = 2**31

#: Steps, numbered as SignedState.step stores them (and as Vote.type numbers prevote and precommit).
PROPOSE = 0
STEP_NAMES = {PROPOSE: "propose", PREVOTE: "prevote", PRECOMMIT: "precommit"}


class Value(Protocol):
    """What consensus agrees on: anything with a 32-byte hash that commits to its content."""

    @property
    def hash(self) -> bytes: ...


class WireValue(Value, Protocol):
    """A value that can also travel on the wire (ler.block.Block is one)."""

    def to_obj(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Proposal:
    """The proposer's value for (height, round); pol_round is the round of its proof of lock, or -1."""

    height: int
    round: int
    pol_round: int
    value: Any  # a Value: only `.hash` is used here
    proposer: bytes
    sig: bytes

    def __post_init__(self) -> None:
        check_proposal_fields(self.height, self.round, self.pol_round, self.proposer, self.sig)

    @property
    def block_hash(self) -> bytes:
        return bytes(self.value.hash)

    @staticmethod
    def payload(height: int, round_: int, pol_round: int, block_hash: bytes) -> dict[str, Any]:
        return {"height": height, "round": round_, "pol_round": pol_round, "block": block_hash}

    @classmethod
    def make(cls, key: KeyPair, chain_id: str, height: int, round_: int, pol_round: int,
             value: Value) -> Proposal:
        sig = key.sign_payload("proposal", chain_id, cls.payload(height, round_, pol_round, value.hash))
        return cls(height, round_, pol_round, value, key.public_key, sig)

    def signature_valid(self, chain_id: str) -> bool:
        payload = self.payload(self.height, self.round, self.pol_round, self.block_hash)
        return keys.verify_signed(self.proposer, "proposal", chain_id, payload, self.sig)

    # --- wire form: the value travels as its own wire object ------------------------------------
    def to_obj(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "pol_round": self.pol_round,
                "value": self.value.to_obj(), "proposer": self.proposer, "sig": self.sig}

    def encode(self) -> bytes:
        return codec.encode(self.to_obj())

    @classmethod
    def from_obj(cls, obj: Any, value_type: type[Wire], where: str = "Proposal") -> Proposal:
        """Decode strictly (unknown or missing fields, wrong types and bounds are DecodeErrors)."""
        if not isinstance(obj, dict):
            raise DecodeError(f"{where}: expected a map")
        expected = {"height", "round", "pol_round", "value", "proposer", "sig"}
        if set(obj) != expected:
            extra = sorted(map(str, set(obj) - expected))
            raise DecodeError(f"{where}: unknown field {extra[0]!r}" if extra
                              else f"{where}: missing field {sorted(expected - set(obj))[0]!r}")
        for name in ("height", "round", "pol_round"):
            if not isinstance(obj[name], int) or isinstance(obj[name], bool):
                raise DecodeError(f"{where}.{name}: expected an integer")
        for name in ("proposer", "sig"):
            if not isinstance(obj[name], bytes):
                raise DecodeError(f"{where}.{name}: expected bytes")
        value = value_type.from_obj(obj["value"], f"{where}.value")
        return cls(obj["height"], obj["round"], obj["pol_round"], value, obj["proposer"], obj["sig"])

    @classmethod
    def decode(cls, data: bytes, value_type: type[Wire], max_size: int = codec.MAX_MESSAGE_BYTES) -> Proposal:
        return cls.from_obj(codec.decode(data, max_size), value_type)


def check_proposal_fields(height: int, round_: int, pol_round: int, proposer: bytes, sig: bytes) -> None:
    if not 1 <= height < 2**64:
        raise DecodeError(f"Proposal.height: {height} is not a height")
    if not 0 <= round_ <= MAX_ROUND:
        raise DecodeError(f"Proposal.round: {round_} is outside [0, {MAX_ROUND}]")
    if not -1 <= pol_round < round_:
        raise DecodeError(f"Proposal.pol_round: {pol_round} must be -1 or a round before {round_}")
    if len(proposer) != 32:
        raise DecodeError("Proposal.proposer: expected 32 bytes")
    if len(sig) != 64:
        raise DecodeError("Proposal.sig: expected 64 bytes")


Message = Proposal | Vote


def sender(message: Message) -> bytes:
    """The validator key that signed `message`."""
    return message.proposer if isinstance(message, Proposal) else message.validator


def describe(message: Message) -> str:
    """A short, log-friendly description: 'prevote h=5 r=1 by 3f2a.. for 9c1d..'."""
    if isinstance(message, Proposal):
        return (f"proposal h={message.height} r={message.round} pol={message.pol_round} "
                f"by {message.proposer[:4].hex()}.. of {message.block_hash[:4].hex()}..")
    kind = STEP_NAMES.get(message.type, f"vote type {message.type}")
    target = message.block[:4].hex() + ".." if message.block is not None else "nil"
    return f"{kind} h={message.height} r={message.round} by {message.validator[:4].hex()}.. for {target}"


@dataclass(frozen=True, slots=True)
class SignedState(Wire):
    """The last message a validator signed, and its lock: persist durably before sending that message.

    (height, round, step) orders everything a validator signs; step is 0 for a proposal, 1 for a
    prevote, 2 for a precommit. `block` is the hash signed (None for a nil vote) and `pol_round` the
    proposal's proof-of-lock round (-1 for votes). The lock and valid value are kept as hashes: after
    a restart the engine refuses to prevote against `locked_block` exactly as before the crash.
    """

    height: int = limit(lo=1)
    round: int = limit(hi=MAX_ROUND)
    step: int = limit(hi=PRECOMMIT)
    block: bytes | None = b32()
    pol_round: int = limit(lo=-1, hi=MAX_ROUND)
    locked_round: int = limit(lo=-1, hi=MAX_ROUND)
    locked_block: bytes | None = b32()
    valid_round: int = limit(lo=-1, hi=MAX_ROUND)
    valid_block: bytes | None = b32()

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.height, self.round, self.step)

    @property
    def is_hold(self) -> bool:
        """A record of nothing signed, only of a height to sign nothing below (`Tendermint.hold_back`):
        a proposal always names its block, so a PROPOSE step without one is never a real signature."""
        return self.step == PROPOSE and self.block is None


__all__ = ["MAX_ROUND", "PRECOMMIT", "PREVOTE", "PROPOSE", "STEP_NAMES", "Message", "Proposal", "SignedState",
           "Value", "Vote", "WireValue", "describe", "sender"]
