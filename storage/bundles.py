"""Building proof bundles from the chain store (the verifying half lives in ler.bundle)."""

from __future__ import annotations

from collections.abc import Sequence

from ler.bundle import (
    AnchorProof,
    HeadProof,
    ProofBundle,
    RecordProof,
    RecordStatus,
    StatusProof,
    ValidatorTransition,
)
from ler.errors import LerError
from ler.record import Disclosure
from ler.state import endorsement_key, issuer_key, record_key
from storage.chain import ChainStore


class BundleError(LerError):
    """A bundle that cannot be built (unknown record, nothing committed yet)."""


def build_bundle(store: ChainStore, items: Sequence[tuple[bytes, Disclosure]],
                 head_height: int | None = None) -> ProofBundle:
    """A bundle for the given (record id, disclosure) pairs, speaking for `head_height` (default: latest)."""
    head_h = store.height if head_height is None else head_height
    if head_h < 1 or head_h > store.height:
        raise BundleError("no committed block to speak for yet" if store.height < 1
                          else f"height {head_h} is not committed")
    head = store.header(head_h)
    cert = store.cert(head_h)
    if head is None or cert is None:
        raise BundleError(f"block {head_h} or its certificate is missing from the store")
    transitions = _transitions(store, head_h)
    records = []
    for record_id, disclosure in items:
        entry = store.get_record(record_id, head_h)
        if entry is None:
            raise BundleError(f"record {record_id.hex()} is not on the ledger (as of block {head_h})")
        loc = store.find_tx(entry.tx)
        raw_tx = store.get_tx(entry.tx)
        ah = store.header(entry.anchored)
        if loc is None or raw_tx is None or ah is None:
            raise BundleError(f"the anchoring transaction of record {record_id.hex()} is missing")
        height, index = loc
        history = store.history_inclusion(height, head_h) if height < head_h else []
        anchor = AnchorProof(tx=raw_tx.raw, index=index, path=tuple(store.tx_inclusion(height, index)),
                             header=ah, history_path=tuple(history))
        endorsements = tuple(store.prove_state(endorsement_key(record_id, e.endorser), head_h)
                             for e in store.endorsements(record_id) if e.height <= head_h)
        records.append(RecordProof(
            record_id=record_id, disclosure=disclosure, anchor=anchor,
            record_state=store.prove_state(record_key(record_id), head_h),
            issuer_then=store.prove_state(issuer_key(entry.issuer), height),
            issuer_now=store.prove_state(issuer_key(entry.issuer), head_h),
            endorsements=endorsements))
    head_proof = HeadProof(header=head, cert=cert, genesis_path=tuple(store.history_inclusion(0, head_h)))
    return ProofBundle(chain_id=store.chain_id, genesis_hash=store.genesis_hash(), head=head_proof,
                       transitions=tuple(transitions), records=tuple(records))


def _head(store: ChainStore, head_h: int) -> HeadProof:
    head, cert = store.header(head_h), store.cert(head_h)
    if head is None or cert is None:
        raise BundleError(f"block {head_h} or its certificate is missing from the store")
    return HeadProof(header=head, cert=cert, genesis_path=tuple(store.history_inclusion(0, head_h)))


def _transitions(store: ChainStore, head_h: int) -> tuple[ValidatorTransition, ...]:
    out = []
    for h in store.validator_change_heights(head_h):
        # validators(h) differs from validators(h-1): header h-1 announced it as next_validators_hash.
        th, tc = store.header(h - 1), store.cert(h - 1)
        if th is None or tc is None:
            raise BundleError(f"block {h - 1} or its certificate is missing from the store")
        out.append(ValidatorTransition(header=th, cert=tc, validators=store.validators(h),
                                       history_path=tuple(store.history_inclusion(h - 1, head_h))))
    return tuple(out)


def build_status(store: ChainStore, record_ids: Sequence[bytes], since: int,
                 head_height: int | None = None) -> StatusProof:
    """A fresh status proof for records of a bundle whose head is block `since` (see ler.bundle.StatusProof):
    the latest committed head (or `head_height`), the consistency proof from `since`, and each record's status."""
    head_h = store.height if head_height is None else head_height
    if head_h < 1 or head_h > store.height:
        raise BundleError("no committed block to speak for yet" if store.height < 1
                          else f"height {head_h} is not committed")
    if not 1 <= since <= head_h:
        raise BundleError(f"since must be a committed height from 1 to {head_h}, not {since}")
    records = []
    for record_id in record_ids:
        entry = store.get_record(record_id, head_h)
        if entry is None:
            raise BundleError(f"record {record_id.hex()} is not on the ledger (as of block {head_h})")
        path = store.history_inclusion(entry.anchored, head_h) if entry.anchored < head_h else []
        ends = tuple(store.prove_state(endorsement_key(record_id, e.endorser), head_h)
                     for e in store.endorsements(record_id) if e.height <= head_h)
        records.append(RecordStatus(record_id=record_id, anchor_history_path=tuple(path),
                                    record_state=store.prove_state(record_key(record_id), head_h),
                                    issuer_now=store.prove_state(issuer_key(entry.issuer), head_h),
                                    endorsements=ends))
    linked = since < head_h
    return StatusProof(chain_id=store.chain_id, genesis_hash=store.genesis_hash(), head=_head(store, head_h),
                       transitions=_transitions(store, head_h), since=since,
                       consistency=tuple(store.history_consistency(since, head_h)) if linked else (),
                       since_path=tuple(store.history_inclusion(since, head_h)) if linked else (),
                       records=tuple(records))
