"""Every ledger rule (ler.ledger) and its refusal, by the rule's name, on a MemoryState built from a genesis.

Each refusal is also checked to leave the state byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ler import codec, keys
from ler.block import GENESIS_FORMAT, MAX_VALIDATORS, Genesis, GenesisAuthority, GenesisIssuer
from ler.errors import RuleError
from ler.keys import KeyPair
from ler.ledger import (
    Context,
    MemoryState,
    Overlay,
    apply_genesis,
    apply_tx,
    apply_vote,
    check_tx,
    get_authorities,
    get_endorsement,
    get_issuer,
    get_proposal,
    get_record,
)
from ler.state import (
    ACCREDITED,
    ACTIVE,
    MAX_ISSUER_KEYS,
    SELF_ASSERTED,
    SUSPENDED,
    UNACCREDITED,
    WITHDRAWN,
    IssuerEntry,
    RecordEntry,
)
from ler.tx import (
    Action,
    GovVote,
    IssuerRotate,
    RecordAnchor,
    RecordEndorse,
    RecordRevoke,
    Tx,
    rotation_body,
    sign_tx,
)

CHAIN = "ler-test"
T0 = 1_700_000_000_000


def kp(label: str) -> KeyPair:
    """A deterministic key per label."""
    return KeyPair(hashlib.sha256(label.encode()).digest())


UNI = kp("university")        # a genesis issuer, scope "degree"
ACADEMY = kp("academy")       # a genesis issuer, scope "military-training"
HOLDER = kp("holder")
STRANGER = kp("stranger")
NEWCO = kp("newco")           # not registered at genesis


class _Reads:
    """A StateView over another that notes the keys read through it."""

    def __init__(self, base: MemoryState) -> None:
        self.base = base
        self.keys: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        self.keys.add(key)
        return self.base.get(key)

    def set(self, key: bytes, value: bytes | None) -> None:
        raise AssertionError("a dry run writes nothing")


class Ledger:
    """The state, a height and time that move as blocks would, and the ids applied so far. Every
    transaction applied or refused is also given to apply_tx with dry=True (admission's check), which must
    agree."""

    def __init__(self, n_authorities: int = 1,
                 issuers: tuple[tuple[KeyPair, tuple[str, ...]], ...] = ((UNI, ("degree",)),
                                                                         (ACADEMY, ("military-training",)))) -> None:
        self.auths = [kp(f"authority {i}") for i in range(n_authorities)]
        self.genesis = Genesis(
            format=GENESIS_FORMAT, chain_id=CHAIN, genesis_time=T0,
            authorities=tuple(GenesisAuthority(a.did, f"authority {i}") for i, a in enumerate(self.auths)),
            issuers=tuple(GenesisIssuer(k.did, f"issuer {i}", scopes) for i, (k, scopes) in enumerate(issuers)))
        self.state = MemoryState()
        apply_genesis(self.state, self.genesis)
        self.height = 1
        self.seen: set[bytes] = set()

    @property
    def time(self) -> int:
        return T0 + 1000 * self.height

    def ctx(self, time: int | None = None) -> Context:
        return Context(CHAIN, self.height, self.time if time is None else time, seen=self.seen.__contains__)

    def next_block(self, n: int = 1) -> None:
        self.height += n

    def tx(self, signer: KeyPair, body: Any) -> Tx:
        tx = sign_tx(signer, CHAIN, body)
        check_tx(tx, CHAIN)
        return tx

    def dry_run_agrees(self, tx: Tx, time: int | None) -> RuleError | None:
        """apply_tx's dry verdict on `tx`, checked to be its full one's (the same refusal, word for word),
        to read the same keys and to write nothing."""
        before = dict(self.state.data)
        full, dry = _Reads(self.state), _Reads(self.state)
        verdicts: list[RuleError | None] = []
        for run, view in ((lambda v: apply_tx(Overlay(v), self.ctx(time), tx), full),
                          (lambda v: apply_tx(v, self.ctx(time), tx, dry=True), dry)):
            try:
                run(view)
                verdicts.append(None)
            except RuleError as exc:
                verdicts.append(exc)
        a, b = verdicts
        assert (a is None) == (b is None) and (a is None or (a.rule, str(a)) == (b.rule, str(b))), (a, b)
        assert dry.keys == full.keys
        assert self.state.data == before
        return b

    def apply(self, signer: KeyPair, body: Any, time: int | None = None) -> Tx:
        tx = self.tx(signer, body)
        assert self.dry_run_agrees(tx, time) is None
        before = dict(self.state.data)
        apply_tx(self.state, self.ctx(time), tx)
        assert self.state.data != before, "an applied transaction writes something"
        self.seen.add(tx.tx_id)
        return tx

    def refuse(self, signer: KeyPair, body: Any, rule: str, time: int | None = None) -> RuleError:
        return self.refuse_tx(self.tx(signer, body), rule, time)

    def refuse_tx(self, tx: Tx, rule: str, time: int | None = None) -> RuleError:
        dry = self.dry_run_agrees(tx, time)
        assert dry is not None and dry.rule == rule, str(dry)
        before = dict(self.state.data)
        with pytest.raises(RuleError) as info:
            apply_tx(self.state, self.ctx(time), tx)
        assert info.value.rule == rule, str(info.value)
        assert self.state.data == before, "a refused transaction must write nothing"
        return info.value

    def vote(self, voters: list[KeyPair], action: Action) -> None:
        for v in voters:
            self.apply(v, GovVote(action))

    def issuer(self, key: KeyPair) -> IssuerEntry | None:
        return get_issuer(self.state, key.did)

    def record(self, rid: bytes) -> RecordEntry:
        entry = get_record(self.state, rid)
        assert entry is not None
        return entry

    def anchor(self, signer: KeyPair, issuer: KeyPair | None = None, holder: KeyPair = HOLDER,
               rtype: str = "degree.bachelor", expires: int | None = None, rid: bytes | None = None) -> bytes:
        rid = rid or os.urandom(16)
        self.apply(signer, anchor_body(rid, issuer or signer, holder, rtype, expires))
        return rid


def anchor_body(rid: bytes, issuer: KeyPair, holder: KeyPair = HOLDER, rtype: str = "degree.bachelor",
                expires: int | None = None) -> RecordAnchor:
    return RecordAnchor(record=rid, issuer=issuer.did, holder=holder.did, rtype=rtype,
                        commitment=hashlib.sha256(rid).digest(), expires=expires)


def accredit(subject: KeyPair, scopes: tuple[str, ...] = ("degree",), name: str = "Newco",
             until: int | None = None) -> Action:
    return Action("accredit", subject.did, name, scopes, until)


def act(kind: str, subject: KeyPair) -> Action:
    if kind == "add_authority":
        return Action(kind, subject.did, "new authority", (), None)
    return Action(kind, subject.did, None, (), None)


# --- genesis ---------------------------------------------------------------------------------------------

def test_genesis_state() -> None:
    led = Ledger(3)
    aset = get_authorities(led.state)
    assert aset.keys == tuple(sorted(a.public_key for a in led.auths))
    uni = led.issuer(UNI)
    assert uni is not None and uni.status == ACTIVE and uni.scopes == ("degree",) and uni.until is None
    assert uni.accredited == 0 and uni.keys[0].key == UNI.public_key and uni.keys[0].since == 0
    assert led.issuer(NEWCO) is None


def test_rules_need_an_initialised_state() -> None:
    with pytest.raises(RuleError) as info:
        apply_vote(MemoryState(), Context(CHAIN, 1, T0), kp("x").public_key, GovVote(act("suspend", UNI)))
    assert info.value.rule == "state.authorities"


# --- transaction envelope: tx.chain, tx.signature, tx.replay ----------------------------------------------

def test_tx_chain() -> None:
    led = Ledger()
    tx = sign_tx(UNI, "other-chain", RecordRevoke(bytes(16), "x"))
    with pytest.raises(RuleError) as info:
        check_tx(tx, CHAIN)
    assert info.value.rule == "tx.chain"
    led.refuse_tx(tx, "tx.chain")
    led.refuse_tx(sign_tx(UNI, "other-chain", anchor_body(os.urandom(16), UNI)), "tx.chain")  # the usual kind


def test_tx_signature() -> None:
    tx = sign_tx(UNI, CHAIN, RecordRevoke(bytes(16), "x"))
    obj = codec.decode(tx.raw)
    for forged in ({**obj, "sig": bytes([obj["sig"][0] ^ 1]) + obj["sig"][1:]},
                   {**obj, "signer": HOLDER.public_key},
                   {**obj, "nonce": obj["nonce"] ^ 1},
                   {**obj, "body": {**obj["body"], "reason": "y"}}):
        with pytest.raises(RuleError) as info:
            check_tx(Tx.from_obj(forged), CHAIN)
        assert info.value.rule == "tx.signature"
    check_tx(tx, CHAIN)


def test_tx_replay() -> None:
    led = Ledger()
    rid = os.urandom(16)
    tx = led.tx(UNI, anchor_body(rid, UNI))
    apply_tx(led.state, led.ctx(), tx)
    led.seen.add(tx.tx_id)
    led.next_block()
    led.refuse_tx(tx, "tx.replay")
    # replay is checked first, whatever else the transaction would break
    revoke = led.apply(UNI, RecordRevoke(rid, "mistake"))
    led.refuse_tx(revoke, "tx.replay")


# --- governance -----------------------------------------------------------------------------------------

def test_vote_authority() -> None:
    led = Ledger(4)
    for outsider in (UNI, HOLDER, kp("authority 9")):
        led.refuse(outsider, GovVote(accredit(NEWCO)), "vote.authority")
    # an authority voted out cannot vote any more
    a0 = led.auths[0]
    led.vote(led.auths[1:4], act("remove_authority", a0))
    led.refuse(a0, GovVote(accredit(NEWCO)), "vote.authority")


@pytest.mark.parametrize(("kind", "setup", "refused"), [
    ("accredit", SUSPENDED, True), ("accredit", ACTIVE, False), ("accredit", WITHDRAWN, False),
    ("accredit", None, False),
    ("suspend", None, True), ("suspend", ACTIVE, False), ("suspend", SUSPENDED, True), ("suspend", WITHDRAWN, True),
    ("reinstate", None, True), ("reinstate", ACTIVE, True), ("reinstate", SUSPENDED, False),
    ("reinstate", WITHDRAWN, True),
    ("withdraw", None, True), ("withdraw", ACTIVE, False), ("withdraw", SUSPENDED, False),
    ("withdraw", WITHDRAWN, True),
])
def test_vote_action_issuer_preconditions(kind: str, setup: str | None, refused: bool) -> None:
    led = Ledger()
    a = led.auths[0]
    subject = NEWCO
    if setup is not None:
        led.vote([a], accredit(NEWCO))
        if setup in (SUSPENDED, WITHDRAWN):
            led.vote([a], act("suspend" if setup == SUSPENDED else "withdraw", NEWCO))
        entry = led.issuer(NEWCO)
        assert entry is not None and entry.status == setup
    action = accredit(subject, scopes=("course",)) if kind == "accredit" else act(kind, subject)
    if refused:
        led.refuse(a, GovVote(action), "vote.action")
    else:
        led.apply(a, GovVote(action))


def test_vote_action_accredit_exactly_as_already() -> None:
    led = Ledger()
    a = led.auths[0]
    led.vote([a], accredit(NEWCO, ("degree",), until=T0 + 10**9))
    led.next_block()
    led.refuse(a, GovVote(accredit(NEWCO, ("degree",), until=T0 + 10**9)), "vote.action")
    # any difference (scopes, name, period) is a real change and may be voted
    led.apply(a, GovVote(accredit(NEWCO, ("degree",), until=T0 + 2 * 10**9)))
    entry = led.issuer(NEWCO)
    assert entry is not None and entry.until == T0 + 2 * 10**9 and entry.accredited == led.height


def test_vote_action_authority_preconditions() -> None:
    led = Ledger(2)
    a, b = led.auths
    led.refuse(a, GovVote(act("add_authority", b)), "vote.action")          # already an authority
    led.refuse(a, GovVote(act("remove_authority", HOLDER)), "vote.action")  # not an authority
    led.apply(a, GovVote(act("remove_authority", b)))
    led.apply(b, GovVote(act("remove_authority", b)))
    assert get_authorities(led.state).keys == (a.public_key,)
    # the last authority cannot be removed
    led.refuse(a, GovVote(act("remove_authority", a)), "vote.action")


def test_vote_action_authority_set_cannot_outgrow_what_decodes() -> None:
    led = Ledger(MAX_VALIDATORS, issuers=())
    led.refuse(led.auths[0], GovVote(act("add_authority", HOLDER)), "vote.action")
    led.apply(led.auths[0], GovVote(act("remove_authority", led.auths[1])))  # the other kind still works


def test_vote_duplicate() -> None:
    led = Ledger(4)
    a = led.auths[0]
    led.apply(a, GovVote(accredit(NEWCO)))
    led.next_block()
    led.refuse(a, GovVote(accredit(NEWCO)), "vote.duplicate")  # another nonce, same vote
    proposal = get_proposal(led.state, accredit(NEWCO).action_id)
    assert proposal is not None and proposal.votes == (a.public_key,) and proposal.opened == 1
    # a vote for a different action is a different proposal
    led.apply(a, GovVote(accredit(NEWCO, ("course",))))


@pytest.mark.parametrize("n", range(1, 8))
def test_action_executes_at_more_than_two_thirds(n: int) -> None:
    led = Ledger(n)
    action = accredit(NEWCO)
    for k, voter in enumerate(led.auths, start=1):
        led.apply(voter, GovVote(action))
        executed = led.issuer(NEWCO) is not None
        assert executed == (3 * k > 2 * n), (k, n)
        if executed:
            assert get_proposal(led.state, action.action_id) is None  # closed
            # late votes for the executed action are refused: it is now exactly the state
            for late in led.auths[k:]:
                led.refuse(late, GovVote(action), "vote.action")
            break
        proposal = get_proposal(led.state, action.action_id)
        assert proposal is not None and len(proposal.votes) == k
    threshold = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 5, 7: 5}[n]
    assert 3 * threshold > 2 * n >= 3 * (threshold - 1)


def test_votes_of_removed_authorities_do_not_count() -> None:
    led = Ledger(4)
    a, b, c, d = led.auths
    action = accredit(NEWCO)
    led.vote([a, b], action)  # 2 of 4: open
    led.vote([b, c, d], act("remove_authority", a))  # 3 of 4: a leaves
    assert len(get_authorities(led.state).members) == 3
    led.apply(c, GovVote(action))  # votes b, c of 3 (a's no longer counts): 2 of 3 is not > 2/3
    assert led.issuer(NEWCO) is None
    proposal = get_proposal(led.state, action.action_id)
    assert proposal is not None and set(proposal.votes) == {b.public_key, c.public_key}
    led.apply(d, GovVote(action))
    assert led.issuer(NEWCO) is not None


def test_add_and_remove_authority() -> None:
    led = Ledger(1)
    a = led.auths[0]
    b, c = kp("authority new b"), kp("authority new c")
    led.apply(a, GovVote(act("add_authority", b)))
    aset = get_authorities(led.state)
    assert set(aset.keys) == {a.public_key, b.public_key} and list(aset.keys) == sorted(aset.keys)
    assert {m.name for m in aset.members} == {"authority 0", "new authority"}
    # now 2 authorities: one vote is not enough, both are
    led.apply(b, GovVote(act("add_authority", c)))
    assert len(get_authorities(led.state).members) == 2
    led.apply(a, GovVote(act("add_authority", c)))
    assert len(get_authorities(led.state).members) == 3
    led.vote([b, c], act("remove_authority", a))  # 2 of 3 is not more than 2/3
    assert len(get_authorities(led.state).members) == 3
    led.vote([a], act("remove_authority", a))     # an authority may vote itself out
    assert get_authorities(led.state).keys == tuple(sorted((b.public_key, c.public_key)))


def test_governance_changes_the_issuer_entry() -> None:
    led = Ledger()
    a = led.auths[0]
    led.vote([a], accredit(NEWCO, ("course", "degree"), name="Newco College", until=T0 + 10**9))
    e = led.issuer(NEWCO)
    assert e is not None
    assert (e.did, e.name, e.scopes, e.status, e.until, e.accredited, e.changed) == (
        NEWCO.did, "Newco College", ("course", "degree"), ACTIVE, T0 + 10**9, 1, 1)
    assert [(k.key, k.since) for k in e.keys] == [(NEWCO.public_key, 1)]
    for h, (kind, status) in enumerate([("suspend", SUSPENDED), ("reinstate", ACTIVE), ("suspend", SUSPENDED),
                                        ("withdraw", WITHDRAWN)], start=2):
        led.next_block()
        led.vote([a], act(kind, NEWCO))
        e = led.issuer(NEWCO)
        assert e is not None and e.status == status and e.changed == h and e.accredited == 1
    led.next_block()
    led.vote([a], accredit(NEWCO, ("degree",)))
    e = led.issuer(NEWCO)
    assert e is not None and e.status == ACTIVE and e.accredited == led.height and e.scopes == ("degree",)
    assert len(e.keys) == 1  # re-accreditation keeps the issuer's keys


# --- key rotation ---------------------------------------------------------------------------------------

def test_rotate_issuer() -> None:
    led = Ledger()
    led.refuse(NEWCO, rotation_body(NEWCO.did, CHAIN, kp("n2")), "rotate.issuer")  # not registered
    led.vote([led.auths[0]], act("withdraw", UNI))
    led.refuse(UNI, rotation_body(UNI.did, CHAIN, kp("u2")), "rotate.issuer")  # withdrawn


def test_a_suspended_issuer_may_rotate() -> None:
    led = Ledger()
    led.vote([led.auths[0]], act("suspend", UNI))
    led.apply(UNI, rotation_body(UNI.did, CHAIN, kp("u2")))


def test_rotate_signer() -> None:
    led = Ledger()
    u2 = kp("u2")
    for wrong in (HOLDER, ACADEMY, led.auths[0], u2):
        led.refuse(wrong, rotation_body(UNI.did, CHAIN, kp("u3")), "rotate.signer")
    led.apply(UNI, rotation_body(UNI.did, CHAIN, u2))
    led.refuse(u2, rotation_body(UNI.did, CHAIN, kp("u3")), "rotate.signer")  # not in force until next height
    led.next_block()
    led.refuse(UNI, rotation_body(UNI.did, CHAIN, kp("u3")), "rotate.signer")  # the old key is retired
    led.apply(u2, rotation_body(UNI.did, CHAIN, kp("u3")))


def test_rotate_pending() -> None:
    led = Ledger()
    led.apply(UNI, rotation_body(UNI.did, CHAIN, kp("u2")))
    led.refuse(UNI, rotation_body(UNI.did, CHAIN, kp("u3")), "rotate.pending")


def test_rotate_reused() -> None:
    led = Ledger()
    led.refuse(UNI, rotation_body(UNI.did, CHAIN, UNI), "rotate.reused")  # its own current key
    u2 = kp("u2")
    led.apply(UNI, rotation_body(UNI.did, CHAIN, u2))
    led.next_block()
    led.refuse(u2, rotation_body(UNI.did, CHAIN, UNI), "rotate.reused")  # back to a retired key


def test_rotate_possession() -> None:
    led = Ledger()
    u2, u3 = kp("u2"), kp("u3")
    payload = IssuerRotate.possession_payload(UNI.did, u2.public_key)
    bad_sigs = [
        u3.sign_payload("rotate", CHAIN, payload),                 # signed by another key
        u2.sign_payload("rotate", "other-chain", payload),         # for another chain
        u2.sign_payload("tx", CHAIN, payload),                     # for another purpose
        u2.sign_payload("rotate", CHAIN, IssuerRotate.possession_payload(ACADEMY.did, u2.public_key)),
        bytes(64),
    ]
    for sig in bad_sigs:
        led.refuse(UNI, IssuerRotate(UNI.did, u2.public_key, sig), "rotate.possession")
    led.apply(UNI, IssuerRotate(UNI.did, u2.public_key, u2.sign_payload("rotate", CHAIN, payload)))


def test_rotate_limit() -> None:
    led = Ledger()
    current = UNI
    for i in range(1, MAX_ISSUER_KEYS):
        new = kp(f"uni key {i}")
        led.apply(current, rotation_body(UNI.did, CHAIN, new))
        led.next_block()
        current = new
    entry = led.issuer(UNI)
    assert entry is not None and len(entry.keys) == MAX_ISSUER_KEYS
    led.refuse(current, rotation_body(UNI.did, CHAIN, kp("one too many")), "rotate.limit")
    # the issuer stays usable: it still anchors and revokes with its current key
    rid = led.anchor(current, UNI)
    assert led.record(rid).standing == ACCREDITED
    led.next_block()
    led.apply(current, RecordRevoke(rid, "test"))


def test_rotation_takes_effect_at_the_next_height() -> None:
    led = Ledger()
    u2 = kp("u2")
    led.apply(UNI, rotation_body(UNI.did, CHAIN, u2))
    entry = led.issuer(UNI)
    assert entry is not None and [(k.key, k.since) for k in entry.keys] == [(UNI.public_key, 0),
                                                                           (u2.public_key, led.height + 1)]
    assert entry.key_at(led.height) == UNI.public_key and entry.key_at(led.height + 1) == u2.public_key
    # the same block: the old key still signs, the new one not yet
    old_rid = led.anchor(UNI, UNI)
    led.refuse(u2, anchor_body(os.urandom(16), UNI), "anchor.key")
    led.next_block()
    led.refuse(UNI, anchor_body(os.urandom(16), UNI), "anchor.key")
    new_rid = led.anchor(u2, UNI)
    assert led.record(old_rid).signer == UNI.public_key and led.record(new_rid).signer == u2.public_key
    assert led.record(new_rid).issuer == UNI.did and led.record(new_rid).standing == ACCREDITED


# --- anchoring ------------------------------------------------------------------------------------------

def test_anchor_entry() -> None:
    led = Ledger()
    rid = os.urandom(16)
    tx = led.apply(UNI, anchor_body(rid, UNI, expires=T0 + 10**9))
    e = led.record(rid)
    assert (e.issuer, e.signer, e.holder, e.rtype, e.commitment, e.standing, e.anchored, e.tx, e.expires,
            e.revoked) == (UNI.did, UNI.public_key, HOLDER.did, "degree.bachelor", hashlib.sha256(rid).digest(),
                           ACCREDITED, led.height, tx.tx_id, T0 + 10**9, None)


def test_anchor_duplicate() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    led.refuse(UNI, anchor_body(rid, UNI), "anchor.duplicate")
    led.refuse(HOLDER, anchor_body(rid, HOLDER, HOLDER), "anchor.duplicate")  # whoever tries
    led.next_block()
    led.refuse(ACADEMY, anchor_body(rid, ACADEMY, rtype="military-training"), "anchor.duplicate")


def test_anchor_key() -> None:
    led = Ledger()
    for wrong in (HOLDER, ACADEMY, led.auths[0]):
        led.refuse(wrong, anchor_body(os.urandom(16), UNI), "anchor.key")


@pytest.mark.parametrize("status", ["suspend", "withdraw"])
def test_anchor_standing(status: str) -> None:
    led = Ledger()
    before = led.anchor(UNI)
    led.next_block()
    led.vote([led.auths[0]], act(status, UNI))
    led.refuse(UNI, anchor_body(os.urandom(16), UNI), "anchor.standing")
    led.refuse(UNI, anchor_body(os.urandom(16), UNI, holder=UNI, rtype="course"), "anchor.standing")
    # records issued before keep their accredited standing
    assert led.record(before).standing == ACCREDITED and led.record(before).revoked is None


def test_reinstated_issuer_anchors_again() -> None:
    led = Ledger()
    led.vote([led.auths[0]], act("suspend", UNI))
    led.next_block()
    led.vote([led.auths[0]], act("reinstate", UNI))
    assert led.record(led.anchor(UNI)).standing == ACCREDITED


def test_anchor_signer() -> None:
    led = Ledger()
    # an unregistered issuer is only ever its own key
    led.refuse(STRANGER, anchor_body(os.urandom(16), NEWCO), "anchor.signer")
    led.refuse(UNI, anchor_body(os.urandom(16), NEWCO), "anchor.signer")
    led.refuse(NEWCO, anchor_body(os.urandom(16), HOLDER, HOLDER), "anchor.signer")


def test_anchor_expired() -> None:
    led = Ledger()
    for expires in (led.time, led.time - 1, 0, T0):
        led.refuse(UNI, anchor_body(os.urandom(16), UNI, expires=expires), "anchor.expired")
    rid = led.anchor(UNI, expires=led.time + 1)
    assert led.record(rid).expires == led.time + 1
    # block time, not height, decides
    led.refuse(UNI, anchor_body(os.urandom(16), UNI, expires=led.time + 5), "anchor.expired", time=led.time + 5)


def test_standing_accredited_self_asserted_unaccredited() -> None:
    led = Ledger()
    assert led.record(led.anchor(UNI, rtype="degree")).standing == ACCREDITED
    assert led.record(led.anchor(UNI, rtype="degree.master.research")).standing == ACCREDITED
    assert led.record(led.anchor(ACADEMY, rtype="military-training.basic")).standing == ACCREDITED
    # self-asserted: an unregistered did about itself
    assert led.record(led.anchor(HOLDER, HOLDER, HOLDER, rtype="skill.python")).standing == SELF_ASSERTED
    assert led.record(led.anchor(HOLDER, HOLDER, HOLDER, rtype="degree")).standing == SELF_ASSERTED
    # unaccredited: an unregistered signer about someone else
    assert led.record(led.anchor(STRANGER, STRANGER, HOLDER, rtype="degree")).standing == UNACCREDITED
    # unaccredited: a registered issuer out of its scope
    for rtype in ("degrees", "deg", "course", "military-training", "degree-x"):
        assert led.record(led.anchor(UNI, rtype=rtype)).standing == UNACCREDITED, rtype
    assert led.record(led.anchor(ACADEMY, rtype="degree.bachelor")).standing == UNACCREDITED


def test_standing_follows_the_accreditation_period() -> None:
    led = Ledger()
    led.vote([led.auths[0]], accredit(NEWCO, ("degree",), until=led.time + 2000))
    assert led.record(led.anchor(NEWCO)).standing == ACCREDITED
    led.next_block(2)  # block time == until: still covered
    assert led.time == T0 + 1000 * led.height and led.record(led.anchor(NEWCO)).standing == ACCREDITED
    led.next_block()   # past until
    assert led.record(led.anchor(NEWCO)).standing == UNACCREDITED
    led.vote([led.auths[0]], accredit(NEWCO, ("degree",), until=None))  # renewed without end
    assert led.record(led.anchor(NEWCO)).standing == ACCREDITED


def test_records_issued_before_a_suspension_keep_their_standing() -> None:
    led = Ledger()
    rids = [led.anchor(UNI) for _ in range(3)]
    led.next_block()
    led.vote([led.auths[0]], act("suspend", UNI))
    led.next_block()
    led.vote([led.auths[0]], act("withdraw", UNI))
    for rid in rids:
        e = led.record(rid)
        assert e.standing == ACCREDITED and e.revoked is None and e.anchored == 1


# --- revocation -----------------------------------------------------------------------------------------

def test_revoke() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    led.next_block()
    led.apply(UNI, RecordRevoke(rid, "issued in error"))
    rev = led.record(rid).revoked
    assert rev is not None and (rev.height, rev.reason) == (led.height, "issued in error")
    assert led.record(rid).standing == ACCREDITED  # standing is history; revocation is separate


def test_revoke_unknown() -> None:
    led = Ledger()
    led.refuse(UNI, RecordRevoke(os.urandom(16), "x"), "revoke.unknown")


def test_revoke_already() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    led.apply(UNI, RecordRevoke(rid, "first"))
    led.refuse(UNI, RecordRevoke(rid, "second"), "revoke.already")
    led.next_block()
    led.refuse(UNI, RecordRevoke(rid, "first"), "revoke.already")


def test_revoke_issuer() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    for who in (HOLDER, ACADEMY, led.auths[0], STRANGER):
        led.refuse(who, RecordRevoke(rid, "not yours"), "revoke.issuer")
    # the holder cannot revoke even a record the issuer made about the holder's own did
    self_rid = led.anchor(HOLDER, HOLDER, HOLDER, rtype="skill")
    led.refuse(UNI, RecordRevoke(self_rid, "x"), "revoke.issuer")
    led.apply(HOLDER, RecordRevoke(self_rid, "withdrawn by me"))
    # an unregistered issuer revokes with its own key
    un_rid = led.anchor(STRANGER, STRANGER, HOLDER)
    led.refuse(HOLDER, RecordRevoke(un_rid, "x"), "revoke.issuer")
    led.apply(STRANGER, RecordRevoke(un_rid, "mine"))


def test_revoke_after_rotation_needs_the_new_key() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    u2 = kp("u2")
    led.apply(UNI, rotation_body(UNI.did, CHAIN, u2))
    rotated_at = led.height + 1
    early = led.refuse(u2, RecordRevoke(rid, "x"), "revoke.issuer")   # not yet in force
    assert f"this key takes over from height {rotated_at}" in str(early)
    led.next_block()
    late = led.refuse(UNI, RecordRevoke(rid, "x"), "revoke.issuer")  # retired
    assert f"retired when the issuer rotated to a new key at height {rotated_at}" in str(late)
    assert "retired" not in str(led.refuse(STRANGER, RecordRevoke(rid, "x"), "revoke.issuer"))
    # the anchor and rotation rules say the same of a retired key
    assert "retired" in str(led.refuse(UNI, anchor_body(os.urandom(16), UNI), "anchor.key"))
    assert "retired" in str(led.refuse(UNI, rotation_body(UNI.did, CHAIN, kp("u3")), "rotate.signer"))
    assert "retired" not in str(led.refuse(STRANGER, anchor_body(os.urandom(16), UNI), "anchor.key"))
    led.apply(u2, RecordRevoke(rid, "by the new key"))


# --- endorsements ---------------------------------------------------------------------------------------

def test_endorse() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    digest = hashlib.sha256(b"worked with them for years").digest()
    led.apply(STRANGER, RecordEndorse(rid, digest))
    led.apply(UNI, RecordEndorse(rid, None))  # the issuer too may vouch
    e = get_endorsement(led.state, rid, STRANGER.public_key)
    assert e is not None and (e.record, e.endorser, e.height, e.digest) == (rid, STRANGER.public_key, led.height,
                                                                          digest)
    assert get_endorsement(led.state, rid, HOLDER.public_key) is None


def test_endorse_unknown() -> None:
    led = Ledger()
    led.refuse(STRANGER, RecordEndorse(os.urandom(16), None), "endorse.unknown")


def test_endorse_revoked() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    led.apply(UNI, RecordRevoke(rid, "x"))
    led.refuse(STRANGER, RecordEndorse(rid, None), "endorse.revoked")


def test_endorse_self() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    led.refuse(HOLDER, RecordEndorse(rid, None), "endorse.self")
    own = led.anchor(HOLDER, HOLDER, HOLDER, rtype="skill")
    led.refuse(HOLDER, RecordEndorse(own, None), "endorse.self")


def test_endorse_duplicate() -> None:
    led = Ledger()
    rid = led.anchor(UNI)
    led.apply(STRANGER, RecordEndorse(rid, None))
    led.next_block()
    led.refuse(STRANGER, RecordEndorse(rid, hashlib.sha256(b"again").digest()), "endorse.duplicate")


# --- overlay -------------------------------------------------------------------------------------------

def test_overlay_reads_its_writes_and_commits_or_discards() -> None:
    base = MemoryState()
    base.set(b"a", b"1")
    ov = Overlay(base)
    ov.set(b"a", b"2")
    ov.set(b"b", b"3")
    ov.set(b"a", None)
    assert ov.get(b"a") is None and ov.get(b"b") == b"3" and base.data == {b"a": b"1"}
    ov.commit()
    assert base.data == {b"b": b"3"} and ov.writes == {}


# --- any sequence: refusals write nothing, nothing but RuleError escapes ---------------------------------

POOL = [kp("authority 0"), kp("authority 1"), kp("authority 2"), UNI, ACADEMY, HOLDER, STRANGER, NEWCO,
        kp("spare 1"), kp("spare 2")]
RIDS = [bytes([i]) * 16 for i in range(3)]

who = st.sampled_from(POOL)
step = st.one_of(
    st.tuples(st.just("vote"), who, st.sampled_from(["accredit", "suspend", "reinstate", "withdraw",
                                                    "add_authority", "remove_authority"]), who,
              st.sampled_from([("degree",), ("course", "degree"), ("skill",)]), st.none() | st.just(T0 + 5000)),
    st.tuples(st.just("rotate"), who, who, who, st.booleans()),
    st.tuples(st.just("anchor"), who, st.sampled_from(RIDS), who, who,
              st.sampled_from(["degree", "degree.x", "skill", "course"]), st.none() | st.integers(T0, T0 + 20_000)),
    st.tuples(st.just("revoke"), who, st.sampled_from(RIDS)),
    st.tuples(st.just("endorse"), who, st.sampled_from(RIDS)),
    st.tuples(st.just("block"), st.integers(1, 3)),
)


def body_of(s: tuple[Any, ...]) -> tuple[KeyPair, Any]:
    if s[0] == "vote":
        _, signer, kind, subject, scopes, until = s
        if kind == "accredit":
            return signer, GovVote(Action(kind, subject.did, "X", scopes, until))
        return signer, GovVote(act(kind, subject))
    if s[0] == "rotate":
        _, signer, issuer, new, honest = s
        body = rotation_body(issuer.did, CHAIN, new)
        if not honest:
            body = IssuerRotate(body.issuer, body.new_key, bytes(64))
        return signer, body
    if s[0] == "anchor":
        _, signer, rid, issuer, holder, rtype, expires = s
        return signer, RecordAnchor(rid, issuer.did, holder.did, rtype, bytes(32), expires)
    if s[0] == "revoke":
        return s[1], RecordRevoke(s[2], "reason")
    return s[1], RecordEndorse(s[2], None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=40))
def test_any_sequence_refusals_write_nothing(steps: list[tuple[Any, ...]]) -> None:
    led = Ledger(3)
    for s in steps:
        if s[0] == "block":
            led.next_block(s[1])
            continue
        signer, body = body_of(s)
        tx = led.tx(signer, body)
        before = dict(led.state.data)
        try:
            apply_tx(led.state, led.ctx(), tx)
        except RuleError:
            assert led.state.data == before
            continue
        assert led.state.data != before
        led.seen.add(tx.tx_id)
        led.refuse_tx(tx, "tx.replay")
    # whatever happened, every entry still decodes and the invariants hold
    aset = get_authorities(led.state)
    assert aset.members and list(aset.keys) == sorted(set(aset.keys))
    for k in POOL:
        e = get_issuer(led.state, k.did)
        if e is not None:
            assert e.status in (ACTIVE, SUSPENDED, WITHDRAWN) and e.keys and e.keys[0].key == k.public_key
            assert [x.since for x in e.keys] == sorted(x.since for x in e.keys)
    for rid in RIDS:
        r = get_record(led.state, rid)
        if r is not None:
            assert r.standing in (ACCREDITED, SELF_ASSERTED, UNACCREDITED)
            assert r.standing != SELF_ASSERTED or r.issuer == r.holder
            assert keys.did_from_public_key(r.signer) == r.issuer or get_issuer(led.state, r.issuer) is not None
