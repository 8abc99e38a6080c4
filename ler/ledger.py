"""The ledger rules: pure functions of (state, context, transaction).

Each rule is a function named after what it does (`apply_vote`, `apply_anchor`, ...). A refusal raises
RuleError whose `rule` names the rule broken, e.g. "anchor.duplicate"; docs/PROTOCOL.md lists them all.
The rules assume the transaction's signature was checked already (`check_tx`), so that a node verifies
each signature once and reuses the result from mempool to block; they never do I/O.

A rule either raises before writing anything, or writes all it has to; callers that must survive a
refusal mid-block apply a block's transactions to an overlay they can throw away (`Overlay`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from ler import keys
from ler.block import MAX_VALIDATORS, Genesis
from ler.errors import RuleError
from ler.state import (
    ACCREDITED,
    ACTIVE,
    MAX_ISSUER_KEYS,
    SELF_ASSERTED,
    SUSPENDED,
    UNACCREDITED,
    WITHDRAWN,
    Authority,
    AuthoritySet,
    EndorsementEntry,
    IssuerEntry,
    KeyEpoch,
    Proposal,
    RecordEntry,
    Revocation,
    StateView,
    authorities_key,
    endorsement_key,
    issuer_key,
    proposal_key,
    record_key,
)
from ler.tx import Action, GovVote, IssuerRotate, RecordAnchor, RecordEndorse, RecordRevoke, Tx
from ler.wire import field_encoder

_E = TypeVar("_E", AuthoritySet, IssuerEntry)


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule may know besides the state: where and when the block is."""

    chain_id: str
    height: int
    time: int  # block time, ms
    seen: Callable[[bytes], bool] = field(default=lambda _tx_id: False)  # tx ids already applied


class Overlay:
    """Buffered writes over a StateView: read-your-writes, committed or discarded as a whole."""

    def __init__(self, base: StateView) -> None:
        self.base = base
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.base.get(key)

    def set(self, key: bytes, value: bytes | None) -> None:
        self.writes[key] = value

    def commit(self) -> None:
        for k, v in self.writes.items():
            self.base.set(k, v)
        self.writes.clear()


class MemoryState:
    """A plain dict state, for tests and for computing genesis."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def set(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value


# --- reading entries --------------------------------------------------------------------------------

# Decoded issuer entries and authority sets by their exact bytes. They are read by nearly every
# transaction and change rarely; equal bytes always decode to the same (immutable) value, and only bytes
# that passed the full decode are kept, so this saves repeating the decode, never a check.
_DECODED_LIMIT = 4096
_decoded: dict[tuple[type, bytes], object] = {}


def _decode_shared(cls: type[_E], raw: bytes) -> _E:
    key = (cls, raw)
    hit = _decoded.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    value = cls.decode(raw)
    if len(_decoded) >= _DECODED_LIMIT:
        _decoded.clear()
    _decoded[key] = value
    return value


def get_authorities(state: StateView) -> AuthoritySet:
    raw = state.get(authorities_key())
    if raw is None:
        raise RuleError("state.authorities", "the state has no authority set (not initialised from genesis)")
    return _decode_shared(AuthoritySet, raw)


def get_issuer(state: StateView, did: str) -> IssuerEntry | None:
    raw = state.get(issuer_key(did))
    return _decode_shared(IssuerEntry, raw) if raw is not None else None


def _key_note(issuer: IssuerEntry, signer: bytes, height: int) -> str:
    """Why `signer`, one of the issuer's keys but not the one in force at `height`, cannot sign now."""
    for i, epoch in enumerate(issuer.keys):
        if epoch.key != signer:
            continue
        if epoch.since > height:
            return f" (this key takes over from height {epoch.since}, after the block of its rotation)"
        if i + 1 < len(issuer.keys):
            return (f" (this key was retired when the issuer rotated to a new key at height "
                    f"{issuer.keys[i + 1].since}; sign with its current key)")
    return ""


def get_record(state: StateView, record_id: bytes) -> RecordEntry | None:
    raw = state.get(record_key(record_id))
    return RecordEntry.decode(raw) if raw is not None else None


def get_proposal(state: StateView, action_id: bytes) -> Proposal | None:
    raw = state.get(proposal_key(action_id))
    return Proposal.decode(raw) if raw is not None else None


def get_endorsement(state: StateView, record_id: bytes, endorser: bytes) -> EndorsementEntry | None:
    raw = state.get(endorsement_key(record_id, endorser))
    return EndorsementEntry.decode(raw) if raw is not None else None


# --- genesis ---------------------------------------------------------------------------------------

def apply_genesis(state: StateView, genesis: Genesis) -> None:
    """Write the genesis authorities and issuers (accredited at height 0) into an empty state."""
    members = sorted((Authority(keys.public_key_from_did(a.did), a.name) for a in genesis.authorities),
                     key=lambda a: a.key)
    state.set(authorities_key(), AuthoritySet(tuple(members)).encode())
    for gi in genesis.issuers:
        entry = IssuerEntry(did=gi.did, name=gi.name, scopes=tuple(sorted(set(gi.scopes))), status=ACTIVE,
                            until=None, accredited=0, changed=0,
                            keys=(KeyEpoch(keys.public_key_from_did(gi.did), 0),))
        state.set(issuer_key(gi.did), entry.encode())


# --- checks before the rules -----------------------------------------------------------------------

def check_tx(tx: Tx, chain_id: str) -> None:
    """Stateless checks: the right network and a valid signature."""
    if tx.chain != chain_id:
        raise RuleError("tx.chain", f"transaction is for chain {tx.chain!r}, this is {chain_id!r}")
    if not tx.signature_valid():
        raise RuleError("tx.signature", "the signature does not verify for the signer's key")


def apply_tx(state: StateView, ctx: Context, tx: Tx, *, dry: bool = False) -> None:
    """Apply one transaction whose signature has been checked. Raises RuleError, writing nothing.

    With `dry`, nothing is written in any case: the verdict alone, from the same reads (a node's check of
    what it admits). A record anchor, nearly every transaction, then takes its checks without building
    the entry it would write; the other kinds write into an overlay that is dropped."""
    if tx.chain != ctx.chain_id:
        raise RuleError("tx.chain", f"transaction is for chain {tx.chain!r}, this is {ctx.chain_id!r}")
    if ctx.seen(tx.tx_id):
        raise RuleError("tx.replay", f"transaction {tx.tx_id.hex()} was applied already")
    body = tx.body
    if dry:
        if isinstance(body, RecordAnchor):
            check_anchor(state, ctx, tx, body)
            return
        state = Overlay(state)
    if isinstance(body, GovVote):
        apply_vote(state, ctx, tx.signer, body)
    elif isinstance(body, IssuerRotate):
        apply_rotate(state, ctx, tx, body)
    elif isinstance(body, RecordAnchor):
        apply_anchor(state, ctx, tx, body)
    elif isinstance(body, RecordRevoke):
        apply_revoke(state, ctx, tx.signer, body)
    elif isinstance(body, RecordEndorse):
        apply_endorse(state, ctx, tx.signer, body)
    else:  # pragma: no cover - Tx decoding admits only the types above
        raise RuleError("tx.type", f"no rule for {tx.type}")


def clock_dependent(tx: Tx) -> bool:
    """Whether a rule may refuse `tx` later with no state change at all, as block time passes.

    Every other refusal follows from a state key the check read being written (or from the block
    height, which only matters together with a write: a key rotation takes effect at the next height).
    A node re-checks its pending transactions after a block by this (node/mempool.py).
    """
    return isinstance(tx.body, RecordAnchor) and tx.body.expires is not None


# --- governance ------------------------------------------------------------------------------------

def apply_vote(state: StateView, ctx: Context, voter: bytes, body: GovVote) -> None:
    """An authority's vote; the action executes once more than 2/3 of the authorities voted for it."""
    authorities = get_authorities(state)
    if voter not in authorities.keys:
        raise RuleError("vote.authority", f"{keys.did_from_public_key(voter)} is not an authority")
    action = body.action
    check_action(state, action)
    aid = action.action_id
    proposal = get_proposal(state, aid) or Proposal(action=action, votes=(), opened=ctx.height)
    if voter in proposal.votes:
        raise RuleError("vote.duplicate", "this authority has already voted for this action")
    votes = tuple(sorted(v for v in (*proposal.votes, voter) if v in authorities.keys))
    if 3 * len(votes) > 2 * len(authorities.members):
        state.set(proposal_key(aid), None)
        execute_action(state, ctx, action)
    else:
        state.set(proposal_key(aid), replace(proposal, votes=votes).encode())


def check_action(state: StateView, action: Action) -> None:
    """Refuse an action that could not take effect in the current state."""
    if action.kind in ("add_authority", "remove_authority"):
        members = get_authorities(state).keys
        key = keys.public_key_from_did(action.subject)
        if action.kind == "add_authority" and key in members:
            raise RuleError("vote.action", f"{action.subject} is already an authority")
        if action.kind == "add_authority" and len(members) >= MAX_VALIDATORS:
            # A larger set could not be decoded again (AuthoritySet, Genesis and certificates hold 128).
            raise RuleError("vote.action", f"there are already {MAX_VALIDATORS} authorities, the most allowed")
        if action.kind == "remove_authority":
            if key not in members:
                raise RuleError("vote.action", f"{action.subject} is not an authority")
            if len(members) == 1:
                raise RuleError("vote.action", "the last authority cannot be removed")
        return
    issuer = get_issuer(state, action.subject)
    status = issuer.status if issuer else None
    allowed = {
        "accredit": (None, ACTIVE, WITHDRAWN),
        "suspend": (ACTIVE,),
        "reinstate": (SUSPENDED,),
        "withdraw": (ACTIVE, SUSPENDED),
    }[action.kind]
    if status not in allowed:
        now = "not registered" if status is None else status
        raise RuleError("vote.action", f"cannot {action.kind} {action.subject}: it is {now}")
    if action.kind == "accredit" and issuer is not None and issuer.status == ACTIVE and (
            issuer.name, issuer.scopes, issuer.until) == (action.name, action.scopes, action.until):
        raise RuleError("vote.action", f"{action.subject} is already accredited exactly so")


def execute_action(state: StateView, ctx: Context, action: Action) -> None:
    if action.kind in ("add_authority", "remove_authority"):
        aset = get_authorities(state)
        key = keys.public_key_from_did(action.subject)
        if action.kind == "add_authority":
            members = [*aset.members, Authority(key, action.name or "")]
        else:
            members = [a for a in aset.members if a.key != key]
        state.set(authorities_key(), AuthoritySet(tuple(sorted(members, key=lambda a: a.key))).encode())
        return
    issuer = get_issuer(state, action.subject)
    if action.kind == "accredit":
        if issuer is None:
            first = KeyEpoch(keys.public_key_from_did(action.subject), ctx.height)
            issuer = IssuerEntry(did=action.subject, name=action.name or "", scopes=action.scopes,
                                 status=ACTIVE, until=action.until, accredited=ctx.height,
                                 changed=ctx.height, keys=(first,))
        else:
            issuer = replace(issuer, name=action.name or "", scopes=action.scopes, status=ACTIVE,
                             until=action.until, accredited=ctx.height, changed=ctx.height)
    else:
        assert issuer is not None  # check_action ran
        status = {"suspend": SUSPENDED, "reinstate": ACTIVE, "withdraw": WITHDRAWN}[action.kind]
        issuer = replace(issuer, status=status, changed=ctx.height)
    state.set(issuer_key(action.subject), issuer.encode())


# --- issuers ---------------------------------------------------------------------------------------

def apply_rotate(state: StateView, ctx: Context, tx: Tx, body: IssuerRotate) -> None:
    """An issuer moves to a new key, effective from the next height (this block still uses the old one)."""
    issuer = get_issuer(state, body.issuer)
    if issuer is None:
        raise RuleError("rotate.issuer", f"{body.issuer} is not a registered issuer")
    if issuer.status == WITHDRAWN:
        raise RuleError("rotate.issuer", f"{body.issuer}'s accreditation was withdrawn")
    if tx.signer != issuer.key_at(ctx.height):
        raise RuleError("rotate.signer", "only the issuer's current key can rotate it"
                        + _key_note(issuer, tx.signer, ctx.height))
    if issuer.keys[-1].since > ctx.height:
        raise RuleError("rotate.pending", "a rotation for this issuer is already pending in this block")
    if any(e.key == body.new_key for e in issuer.keys):
        raise RuleError("rotate.reused", "the new key was used by this issuer before")
    if len(issuer.keys) >= MAX_ISSUER_KEYS:
        # One more key would make an entry that no longer decodes, locking the issuer and its records.
        raise RuleError("rotate.limit", f"an issuer may rotate its key at most {MAX_ISSUER_KEYS - 1} times")
    if not keys.verify_signed(body.new_key, "rotate", ctx.chain_id,
                              IssuerRotate.possession_payload(body.issuer, body.new_key), body.new_key_sig):
        raise RuleError("rotate.possession", "new_key_sig does not prove possession of the new key")
    epochs = (*issuer.keys, KeyEpoch(body.new_key, ctx.height + 1))
    state.set(issuer_key(body.issuer), replace(issuer, keys=epochs).encode())


# --- records ---------------------------------------------------------------------------------------

def check_anchor(state: StateView, ctx: Context, tx: Tx, body: RecordAnchor) -> tuple[bytes, str]:
    """apply_anchor's checks: the record's state key and the standing it gets, or RuleError."""
    key = record_key(body.record)
    if state.get(key) is not None:
        raise RuleError("anchor.duplicate", f"record {body.record.hex()} is already anchored")
    issuer = get_issuer(state, body.issuer)
    if issuer is not None:
        if tx.signer != issuer.key_at(ctx.height):
            raise RuleError("anchor.key", f"the signer is not {body.issuer}'s current key"
                            + _key_note(issuer, tx.signer, ctx.height))
        if issuer.status != ACTIVE:
            raise RuleError("anchor.standing", f"{body.issuer}'s accreditation is {issuer.status}")
    elif keys.did_from_public_key(tx.signer) != body.issuer:
        raise RuleError("anchor.signer", "an unregistered issuer must sign with the key of its own did")
    if body.expires is not None and body.expires <= ctx.time:
        raise RuleError("anchor.expired", "the record's expiry is already past")
    if issuer is not None and issuer.accredits(body.rtype, ctx.time):
        return key, ACCREDITED
    if body.issuer == body.holder:
        return key, SELF_ASSERTED
    return key, UNACCREDITED


def apply_anchor(state: StateView, ctx: Context, tx: Tx, body: RecordAnchor) -> None:
    """Anchor a record. Its standing is fixed now: accredited only if the issuer may issue this type."""
    key, standing = check_anchor(state, ctx, tx, body)
    state.set(key, _encode_record_entry(
        issuer=body.issuer, signer=tx.signer, holder=body.holder, rtype=body.rtype, commitment=body.commitment,
        standing=standing, anchored=ctx.height, tx=tx.tx_id, expires=body.expires, revoked=None))


# RecordEntry(...).encode() without the object, which apply_anchor would make only to store its bytes.
_encode_record_entry = field_encoder(RecordEntry)


def apply_revoke(state: StateView, ctx: Context, signer: bytes, body: RecordRevoke) -> None:
    """Only the record's issuer (by its current key) may revoke it, once, with a reason."""
    record = get_record(state, body.record)
    if record is None:
        raise RuleError("revoke.unknown", f"no record {body.record.hex()} on the ledger")
    if record.revoked is not None:
        raise RuleError("revoke.already", f"record was revoked at height {record.revoked.height}")
    issuer = get_issuer(state, record.issuer)
    allowed = issuer.key_at(ctx.height) if issuer is not None else keys.public_key_from_did(record.issuer)
    if signer != allowed:
        note = _key_note(issuer, signer, ctx.height) if issuer is not None else ""
        raise RuleError("revoke.issuer", "only the record's issuer can revoke it" + note)
    entry = replace(record, revoked=Revocation(height=ctx.height, reason=body.reason))
    state.set(record_key(body.record), entry.encode())


def apply_endorse(state: StateView, ctx: Context, endorser: bytes, body: RecordEndorse) -> None:
    """Any did:key may vouch for a record once; it is shown with the endorser, never as accreditation."""
    record = get_record(state, body.record)
    if record is None:
        raise RuleError("endorse.unknown", f"no record {body.record.hex()} on the ledger")
    if record.revoked is not None:
        raise RuleError("endorse.revoked", "the record is revoked")
    if keys.did_from_public_key(endorser) == record.holder:
        raise RuleError("endorse.self", "a holder cannot endorse their own record")
    if get_endorsement(state, body.record, endorser) is not None:
        raise RuleError("endorse.duplicate", "this did has already endorsed the record")
    entry = EndorsementEntry(record=body.record, endorser=endorser, height=ctx.height, digest=body.digest)
    state.set(endorsement_key(body.record, endorser), entry.encode())
