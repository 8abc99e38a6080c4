"""`ler` commands for standard credentials and holder binding: export, import-badge, present, and a `verify`
that also reads credentials and presentations (docs/VC.md).

Registered onto node.cli's root group when node.cli imports this module (its last line). `verify` replaces
the bundle-only command of node.cli and hands proof bundles to it unchanged, so every flag and output of
the bundle path stays as it was.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from ler import keys
from ler.block import Genesis
from ler.bundle import (
    MAX_BUNDLE_BYTES,
    TAMPERED,
    WRONG_CHAIN,
    Check,
    ProofBundle,
    RecordReport,
    VerificationResult,
    verify_bundle,
    with_evidence,
)
from ler.dates import MAX_MS, utc_text
from ler.errors import DecodeError
from ler.files import read_capped
from ler.presentation import (
    MAX_PRESENTATION_BYTES,
    PRESENTATION_FORMAT,
    PresentationReport,
    make_presentation,
    verify_presentation,
)
from ler.record import RecordDocument, make_claims
from ler.tx import check_record_type
from ler.vc import (
    CRYPTOSUITE,
    LEDGER_ABSENT,
    LEDGER_MISSING,
    LEDGER_NOT_CHECKED,
    BadgeImport,
    CredentialError,
    CredentialReport,
    VcResult,
    badge_claims,
    bundle_record,
    credential_from_bundle,
    now_iso,
    sign_credential,
    verify_ler_credential,
)
from node import cli as base
from node.cli import (
    EXIT_NEGATIVE,
    GENESIS_ENV,
    bad_input,
    check_evidence,
    did_or_key_file,
    emit_json,
    evidence_reason,
    fmt_time,
    load_genesis,
    load_key,
    negative,
    node_option,
    now_ms,
    parse_time_ms,
    read_json_file,
    refuse_existing,
    render_result,
    render_value,
    say,
    split_list,
    verdict_line,
    wait_option,
)

MAX_CREDENTIAL_BYTES = MAX_PRESENTATION_BYTES


def _write_json(path: str, obj: Any) -> None:
    try:
        Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise bad_input(f"cannot write {path}: {exc.strerror}") from None


# --- export ------------------------------------------------------------------------------------------------

@click.command("export", cls=base.LerCommand)
@node_option
@click.option("--record", "record_path", required=True, metavar="FILE", help="The holder's record file.")
@click.option("--reveal", "reveal", multiple=True, metavar="K1,K2",
              help="Claims to carry (repeatable or comma-separated); default: every claim.")
@click.option("--reveal-none", is_flag=True, help="Carry no claim (the credential proves only the record).")
@click.option("--key", "key_path", required=True, metavar="FILE",
              help="The issuer's signing key (its current key, after a rotation).")
@click.option("--out", required=True, metavar="FILE", help="Where to write the credential (JSON).")
@click.option("--genesis", "genesis_path", metavar="FILE",
              help="Also verify the ledger anchor against this genesis file before writing.")
def export(node_url: str, record_path: str, reveal: tuple[str, ...], reveal_none: bool, key_path: str, out: str,
           genesis_path: str | None) -> None:
    """Export a record as an Open Badges 3.0 / W3C VC 2.0 credential signed by its issuer (eddsa-jcs-2022).

    The ledger anchor (a proof bundle of the claims carried) travels inside the credential, so a standard
    verifier checks the issuer's signature and `ler verify --genesis` checks the ledger too. Hidden claims
    never appear in it.
    """
    try:
        doc = RecordDocument.load(record_path)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    names = split_list(reveal)
    if names and reveal_none:
        raise bad_input("give --reveal or --reveal-none, not both")
    if not names and not reveal_none:
        names = [c.key for c in doc.claims]
    try:
        disclosure = doc.disclose(names)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    key = load_key(key_path)
    genesis = load_genesis(genesis_path) if genesis_path else None

    bundle = base.request_bundle(base.make_client(node_url), [(doc, disclosure)], stacked=False)
    try:
        rec = bundle_record(bundle)
    except CredentialError as exc:
        raise negative(f"the node returned an unusable bundle: {exc}") from None
    want = rec.signing_key()
    if key.public_key != want:
        raise bad_input(f"--key is {key.did}, but this record's issuer ({doc.issuer}) signs with "
                        f"{keys.did_from_public_key(want)} as of block {bundle.head.header.height}: only the "
                        "issuer's current key can sign its credentials")
    if genesis is not None:
        result = verify_bundle(bundle, genesis)
        if result.verdict in (TAMPERED, WRONG_CHAIN):
            raise negative(f"the ledger anchor does not verify against {genesis_path}: "
                           f"{verdict_line(result, genesis)}")
    try:
        unsigned = credential_from_bundle(bundle, f"urn:uuid:{uuid.uuid4()}")
        credential = sign_credential(unsigned, key, now_iso())
    except CredentialError as exc:
        raise negative(f"cannot make the credential: {exc}") from None
    report = verify_ler_credential(credential, genesis)
    if not report.signature.ok or (genesis is not None and not report.issuer_key.ok):
        raise negative("the credential made does not verify (a bug): "
                       + "; ".join(c.detail for c in report.checks if not c.ok))
    _write_json(out, credential)
    shown = ", ".join(names) if names else "nothing"
    hidden = ", ".join(disclosure.hidden_names()) or "none"
    say(f"wrote {out}: Open Badges 3.0 credential for record {doc.record_id.hex()}, signed by {key.did} "
        f"({CRYPTOSUITE})")
    say(f"  carries: {shown}; hidden: {hidden}")
    say(f"  ledger anchor: proof bundle as of block {bundle.head.header.height}"
        + (f", checked against {genesis_path}: {report.ledger.verdict}" if report.ledger is not None else ""))
    if key.did != doc.issuer:
        say(f"note: {key.did} is the issuer's key after a rotation, not its did ({doc.issuer}): verifiers see "
            "that it speaks for the issuer only with the ledger check (ler verify --genesis)", err=True)


# --- import ------------------------------------------------------------------------------------------------

@click.command("import-badge", cls=base.LerCommand)
@node_option
@click.option("--key", "key_path", required=True, metavar="FILE", help="The anchoring issuer's signing key.")
@click.option("--credential", "credential_path", required=True, metavar="FILE",
              help="An Open Badges 3.0 credential (JSON).")
@click.option("--holder", required=True, metavar="DID", help="The holder's did (or key file).")
@click.option("--type", "rtype", required=True, metavar="RTYPE", help="Record type, e.g. badge.teamwork.")
@click.option("--out", required=True, metavar="FILE", help="Where to write the holder's record file.")
@click.option("--issuer", metavar="DID", help="The issuer's identity, if not the key's did (after a key rotation).")
@click.option("--expires", metavar="ISO-or-ms", help="When the record expires (default: the badge's validUntil).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@wait_option
def import_badge(node_url: str, key_path: str, credential_path: str, holder: str, rtype: str, out: str,
                 issuer: str | None, expires: str | None, as_json: bool, wait_s: float) -> None:
    """Anchor an Open Badges 3.0 credential as a ledger record and write the holder's record file.

    Its eddsa-jcs-2022 proof, if it has one, must verify. The achievement's name, description, criteria and
    type, the badge issuer, dates and ids become claims, with one claim committing to the credential file's
    SHA-256 (check it later with `ler verify --evidence credential_file=FILE`).
    """
    refuse_existing(out, "a record file")
    try:
        raw = read_capped(credential_path, MAX_CREDENTIAL_BYTES)
    except OSError as exc:
        raise bad_input(f"cannot read credential {credential_path}: {exc.strerror}") from None
    try:
        obj = read_json_file(credential_path, "credential", MAX_CREDENTIAL_BYTES,
                             object_pairs_hook=base.reject_duplicate_keys)
    except DecodeError as exc:
        raise bad_input(f"credential {credential_path}: {exc}") from None
    try:
        found: BadgeImport = badge_claims(obj, hashlib.sha256(raw).hexdigest(), Path(credential_path).name)
    except CredentialError as exc:
        if "does not verify" in str(exc):
            raise negative(f"refusing to anchor {credential_path}: {exc}") from None
        raise bad_input(f"{credential_path} is not an Open Badges 3.0 credential: {exc}") from None
    try:
        claims = make_claims(found.claims)
        check_record_type(rtype)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    holder_did = did_or_key_file(holder, "--holder")
    expires_ms = parse_time_ms(expires, "--expires") if expires else found.valid_until_ms
    if expires_ms is not None and expires_ms > MAX_MS:
        raise bad_input(f"the badge's validUntil is later than any time a record can hold ({utc_text(MAX_MS)}): "
                        "give --expires")
    if expires_ms is not None and expires_ms <= now_ms():
        raise bad_input(f"the badge expired at {fmt_time(expires_ms)}" if not expires
                        else f"--expires {expires} is already past")
    key = load_key(key_path)
    client = base.make_client(node_url)
    issuer_did = did_or_key_file(issuer, "--issuer") if issuer else base.issuer_of_key(client, key, key_path)

    doc, tx_id, height = base.anchor_record(client, key, issuer_did, holder_did, rtype,
                                            expires_ms, claims, out, wait_s)
    if as_json:
        emit_json({"record_id": doc.record_id.hex(), "tx": tx_id.hex(), "height": height, "issuer": issuer_did,
                   "holder": holder_did, "type": rtype, "proof": found.proof_note,
                   "proof_verified": found.proof_verified, "claims": sorted(found.claims), "out": out})
        return
    say(f"anchored record {doc.record_id.hex()} at block {height} from {credential_path}")
    say(f"  badge:  {found.claims['name']}")
    say(f"  proof:  {found.proof_note}")
    say(f"  claims: {', '.join(sorted(found.claims))}")
    say(f"  holder: {holder_did}")
    if found.subject_id and found.subject_id != holder_did:
        say(f"  note:   the badge names its subject {found.subject_id}; the record's holder is {holder_did}")
    say(f"wrote {out}: give it to the holder (it holds every claim and its salt; keep it private)")


# --- present -----------------------------------------------------------------------------------------------

@click.command("present", cls=base.LerCommand)
@click.option("--bundle", "bundle_path", metavar="FILE", help="A proof bundle of your records.")
@click.option("--credential", "credential_path", metavar="FILE", help="Or: an exported credential of yours.")
@click.option("--key", "key_path", required=True, metavar="FILE", help="Your holder key (the records' holder did).")
@click.option("--challenge", required=True, metavar="TEXT", help="The challenge the verifier gave you.")
@click.option("--out", required=True, metavar="FILE", help="Where to write the presentation.")
def present(bundle_path: str | None, credential_path: str | None, key_path: str, challenge: str, out: str) -> None:
    """Sign a bundle (or credential) for a verifier's challenge with your holder key.

    The verifier checks it with `ler verify FILE --genesis G --challenge TEXT`: a copy made for another
    challenge, or signed by anyone but the records' holder, fails.
    """
    if (bundle_path is None) == (credential_path is None):
        raise bad_input("give what to present as --bundle FILE or --credential FILE (one of them)")
    kind, path = ("bundle", bundle_path) if bundle_path else ("credential", credential_path)
    assert path is not None
    try:
        raw = read_capped(path, max(MAX_BUNDLE_BYTES, MAX_CREDENTIAL_BYTES))
    except OSError as exc:
        raise bad_input(f"cannot read {kind} {path}: {exc.strerror}") from None
    if kind == "bundle":
        try:
            ProofBundle.loads(raw)  # a bundle must be the untouched canonical file
        except DecodeError as exc:
            raise bad_input(f"{path} is not a proof bundle: {exc}") from None
    try:
        content = json.loads(raw, object_pairs_hook=base.reject_duplicate_keys)
    except (ValueError, DecodeError) as exc:
        raise bad_input(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_input(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(content, dict):
        raise bad_input(f"{path} is not a {kind}")
    key = load_key(key_path)
    try:
        pres = make_presentation(kind, content, key, challenge)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    try:
        Path(out).write_bytes(pres.dumps())
    except OSError as exc:
        raise bad_input(f"cannot write {out}: {exc.strerror}") from None
    say(f"wrote {out}: your {kind} signed by {key.did} for the challenge {challenge!r}")


# --- verify: bundles, credentials and presentations ---------------------------------------------------------

_bundle_verify = base.cli.commands["verify"]


def _sniff(path: str) -> tuple[str, Any]:
    """("presentation" | "credential", parsed JSON) or ("bundle", None) for everything else."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:  # whatever it is meant to be, a file that cannot be read is bad usage
        raise base.unreadable(path, exc) from None
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise negative(f"{path} is larger than anything `ler verify` reads (a proof bundle is at most "
                       f"{MAX_BUNDLE_BYTES // 2**20} MiB, a credential or presentation at most "
                       f"{MAX_CREDENTIAL_BYTES // 2**20} MiB): it cannot be verified")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return "bundle", None
    if isinstance(obj, dict) and obj.get("format") == PRESENTATION_FORMAT:
        return "presentation", raw
    if isinstance(obj, dict) and ("proof" in obj or "@context" in obj):
        try:
            return "credential", json.loads(raw, object_pairs_hook=base.reject_duplicate_keys)
        except DecodeError as exc:
            return "credential", exc
    return "bundle", None


_VERIFY_HELP = """Verify a proof bundle, a credential or a holder's presentation, offline.

A proof bundle is checked against the genesis file (--genesis required). A credential: its eddsa-jcs-2022
signature, that the key is its issuer's, its validity period, and its ledger anchor when --genesis is given.
A presentation (--challenge required): the holder's signature over your challenge, and what it presents.

Exit status 0 only when every part checked passes (and every --evidence file matches).
"""
_OWN_OPTIONS = {"bundle_path", "genesis_path", "evidence_specs", "as_json", "challenge"}


def _verify_params() -> list[click.Parameter]:
    """The bundle command's own parameters (so any flag it has, or gains, still reaches it), with --genesis
    made optional (a credential needs none) and --challenge added."""
    params: list[click.Parameter] = []
    for p in _bundle_verify.params:
        q = copy.copy(p)
        if q.name == "genesis_path":
            q.required = False
            if isinstance(q, click.Option):
                q.help = f"The network's genesis file (default from ${GENESIS_ENV}); needed for bundles."
        if q.name == "bundle_path" and isinstance(q, click.Argument):
            q.metavar = "FILE"
        params.append(q)
    params.append(click.Option(["--challenge"], metavar="TEXT",
                               help="The challenge you gave the holder (for a presentation)."))
    return params


def _verify(**kw: Any) -> None:
    ctx = click.get_current_context()
    path: str = kw["bundle_path"]
    genesis_path: str | None = kw["genesis_path"]
    evidence_specs: tuple[str, ...] = kw.get("evidence_specs") or ()
    challenge: str | None = kw.pop("challenge")
    as_json = bool(kw.get("as_json"))
    kind, parsed = _sniff(path)
    if kind == "bundle":
        if challenge is not None:
            raise negative(f"{path} is not a presentation: nothing in it is signed by the holder for your "
                           "challenge (ask the holder for one made with `ler present`)")
        if genesis_path is None:
            raise click.UsageError("Missing option '--genesis'.", ctx)
        ctx.invoke(_bundle_verify, **kw)
        return
    for name, value in kw.items():
        if name not in _OWN_OPTIONS and value not in (None, False, ()):
            raise bad_input(f"--{name.replace('_', '-')} applies to proof bundles; {path} is a {kind}")
    genesis = load_genesis(genesis_path) if genesis_path else None
    if kind == "presentation":
        if challenge is None:
            raise bad_input(f"{path} is a holder's presentation: give the challenge you issued with --challenge")
        _verify_presentation(parsed, genesis, challenge, evidence_specs, as_json)
        return
    if challenge is not None:
        raise negative(f"{path} is a credential, not a presentation: nothing in it is signed by the holder "
                       "for your challenge (ask the holder for one made with `ler present --credential`)")
    report = _credential_report(parsed, genesis)
    report.evidence = _credential_evidence(report, evidence_specs)  # a file that does not match fails the verdict
    if as_json:
        emit_json(report.to_json())
    else:
        for line in credential_lines(report, genesis):
            say(line)
    if not report.ok:
        sys.exit(EXIT_NEGATIVE)


verify = base.LerCommand("verify", params=_verify_params(), callback=_verify, help=_VERIFY_HELP,
                       short_help="Verify a proof bundle, a credential or a holder's presentation, offline.")


def _credential_report(parsed: Any, genesis: Genesis | None) -> CredentialReport:
    if isinstance(parsed, DecodeError):
        sig = VcResult(checks=[Check("format", False, f"the credential is not well-formed JSON: {parsed}")])
        return CredentialReport(signature=sig, issuer=None,
                                issuer_key=Check("issuer key", False, "not checked: no valid signature"),
                                validity=Check("validity period", False, "not checked"))
    return verify_ler_credential(parsed, genesis)


def _credential_evidence(report: CredentialReport, specs: tuple[str, ...]) -> list[Check]:
    if not specs:
        return []
    if report.ledger is not None:
        return check_evidence(report.ledger, specs)
    # No ledger check: compare with the claims the issuer signed into the credential.
    signed = report.claims if report.signature.ok else {}
    return check_evidence(VerificationResult(TAMPERED, [], [RecordReport(record_id="", disclosed=signed)]), specs)


def _part(ok: bool) -> str:
    return "valid" if ok else "INVALID"


def credential_headline(rep: CredentialReport, genesis: Genesis | None) -> str:
    if rep.ledger_state == LEDGER_ABSENT:
        ledger = "ledger anchor: none travels with this credential"
    elif rep.ledger_state == LEDGER_MISSING:
        ledger = ("ledger anchor: NOT ANCHORED: none travels with this credential, so nothing proves it is on the "
                  "ledger of this genesis file")
    elif rep.ledger_state == LEDGER_NOT_CHECKED:
        ledger = "ledger anchor: not checked (no --genesis)"
    elif rep.ledger is not None and genesis is not None:
        ledger = f"ledger anchor: {verdict_line(rep.ledger, genesis)}"
        if rep.match is not None and not rep.match.ok and rep.ledger.ok:
            ledger += "; but the credential does not match it"
    else:
        ledger = "ledger anchor: not checked"
    parts = (f"signature: {_part(rep.signature.ok)}; issuer key: {_part(rep.issuer_key.ok)}; "
             f"validity period: {_part(rep.validity.ok)}; {ledger}")
    if rep.ok:
        return "VALID: " + parts
    if rep.signature.ok and rep.issuer_key.ok and rep.validity.ok:
        if rep.ledger is not None and not rep.ledger.ok:
            return f"{base._HEADLINE.get(rep.ledger.verdict, rep.ledger.verdict.upper())}: " + parts
        if rep.ledger_state == LEDGER_MISSING:
            return "NOT ANCHORED: " + parts
        if rep.ledger_ok and not rep.evidence_ok:
            return f"EVIDENCE MISMATCH: {evidence_reason(rep.evidence)}; " + parts
    return "NOT VALID: " + parts


def credential_lines(rep: CredentialReport, genesis: Genesis | None) -> list[str]:
    lines = [credential_headline(rep, genesis), ""]
    lines.append(f"Credential: {rep.name or '(no name)'}")
    if rep.signature.signer:
        lines.append(f"  signed by: {rep.signature.signer} ({CRYPTOSUITE}"
                     + (f", {rep.signature.created})" if rep.signature.created else ")"))
    if rep.issuer:
        lines.append(f"  issuer:    {f'{rep.issuer_name} ({rep.issuer})' if rep.issuer_name else rep.issuer}")
    if rep.subject:
        lines.append(f"  subject:   {rep.subject}")
    if rep.claims:
        lines.append("  claims:")
        lines.extend(f"    {k}: {render_value(v)}" for k, v in rep.claims.items())
    if rep.ledger is not None and genesis is not None:
        ledger_lines = render_result(rep.ledger, genesis, [])
        cut = ledger_lines.index("Checks:") if "Checks:" in ledger_lines else len(ledger_lines)
        lines.append("")
        lines.append("Ledger anchor:")
        lines.extend("  " + ln for ln in ledger_lines[1:cut] if ln)
    lines.append("")
    lines.append("Checks:")
    for c in [*rep.checks, *rep.evidence]:
        lines.append(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    if rep.ledger_state == LEDGER_NOT_CHECKED:
        lines.append("  [--] ledger anchor: not checked (no --genesis)")
    return lines


def _verify_presentation(raw: bytes, genesis: Genesis | None, challenge: str, evidence_specs: tuple[str, ...],
                         as_json: bool) -> None:
    try:
        kind = "bundle" if "bundle" in json.loads(raw) else "credential"
    except (ValueError, TypeError):
        kind = "bundle"
    if kind == "bundle" and genesis is None:
        raise bad_input("a presented bundle is verified against the network's genesis file: give --genesis")
    rep = verify_presentation(raw, genesis, challenge)
    extra: list[Check] = []
    if rep.bundle is not None:
        extra = check_evidence(rep.bundle, evidence_specs)
        with_evidence(rep.bundle, extra)  # a file that does not match fails what is presented
    elif rep.credential is not None:
        extra = rep.credential.evidence = _credential_evidence(rep.credential, evidence_specs)
    if as_json:
        obj = rep.to_json()
        if extra:
            obj["evidence"] = [c.to_json() for c in extra]
        emit_json(obj)
    else:
        for line in presentation_lines(rep, genesis, extra):
            say(line)
    if not rep.ok or not all(c.ok for c in extra):
        sys.exit(EXIT_NEGATIVE)


def presentation_lines(rep: PresentationReport, genesis: Genesis | None, extra: list[Check]) -> list[str]:
    failed = [c for c in rep.binding if not c.ok]
    if rep.bundle is not None and genesis is not None:
        inner = render_result(rep.bundle, genesis, extra)
    elif rep.credential is not None:
        inner = credential_lines(rep.credential, genesis)
    else:
        inner = []
    if failed:
        head = f"NOT VALID: {failed[0].name}: {failed[0].detail}"
    elif not rep.inner_ok:
        head = f"NOT VALID: presented by its holder, but {inner[0] if inner else 'what it presents fails'}"
    else:
        head = f"VALID: presented by its holder {rep.holder} for your challenge; {inner[0] if inner else ''}"
    lines = [head, "", "Holder binding:"]
    lines.extend(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in rep.binding)
    if inner:
        lines.append("")
        lines.append(f"Presented {rep.kind}:")
        lines.extend(inner)
    return lines


base.cli.add_command(export)
base.cli.add_command(import_badge)
base.cli.add_command(present)
base.cli.add_command(verify)

__all__ = ["credential_lines", "export", "import_badge", "present", "verify"]
