"""The verify page (GET /verify), driven in a real headless browser against a real node.

One single-authority node, set up and fed entirely through the `ler` command line: an accredited
university's degree (with one claim hidden and an endorsement), a revoked degree, a self-asserted skill and
an unaccredited issuer's record, each proven with `ler prove`; a tampered copy of the first bundle has one
byte changed ("BSc" made "MSc"). The first record is also exported with `ler export` (an Open Badges 3.0
credential signed by the university's key), with a tampered copy whose degree claim was changed and the
credential re-serialised. A person's actions on the page: choose a file, drop a file, walk it with
the keyboard alone; axe-core finds no serious or critical accessibility violation; the page reflows at 200%
zoom; text from a bundle is never markup.

Expired and wrong-network verdicts come from the real verifier too (ler.bundle.verify_bundle with a later
clock, or another network's genesis) and reach the page through Playwright's request interception.

The browser is Debian's chromium (tests/browser_support.py; scripts/install-browser installs it, as root).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from browser_support import axe_violations, chromium_browser, describe_violations, ensure_axe
from node_proc import LER, NodeProc, free_port, http

from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority
from ler.bundle import verify_bundle
from ler.keys import KeyPair
from ler.record import RecordDocument

pytestmark = pytest.mark.slow

CHAIN_ID = "verify-page-test"
EXPIRES = "2099-12-31"


def ler(*args: str, cwd: Path) -> str:
    """Run the `ler` console script; its stdout. Fails the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    r = subprocess.run([str(LER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ler {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@dataclass
class Ledger:
    node: NodeProc
    folder: Path
    genesis: Genesis
    university: str
    holder: str
    friend: str
    stranger: str
    revoked_at: int
    valid: Path           # accredited degree: degree and field shown, awarded hidden, endorsed by friend
    tampered: Path        # valid.json with one byte changed
    revoked: Path         # another accredited degree, revoked "issued in error"
    self_asserted: Path   # the holder's own record about a skill
    unaccredited: Path    # a record by a signer nobody accredited
    credential: Path      # record.json exported by the university (`ler export`), degree and field carried
    forged: Path          # credential.json with the degree claim made "MSc", re-serialised

    @property
    def page_url(self) -> str:
        return self.node.url + "/verify"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    d = tmp_path_factory.mktemp("verify-page")
    port = free_port()
    node_opt = ["--node", f"http://127.0.0.1:{port}"]
    run = partial(ler, cwd=d)
    ler("keys", "new", "--out", "authority.key", cwd=d)
    ler("genesis", "new", "--chain-id", CHAIN_ID, "--authority", "authority.key",
        "--name", "National Accreditation Board", "--out", "genesis.json", cwd=d)
    ler("node", "init", "--genesis", "genesis.json", "--key", "authority.key", "--data", "node",
        "--listen", f"127.0.0.1:{port}", cwd=d)
    node = NodeProc(d / "node", log_path=d / "node.log").start()
    # Independent command sequences run side by side: each `ler` is a process that mostly waits for a block.
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        university, holder, friend, stranger = (did.strip() for did in pool.map(
            lambda name: run("keys", "new", "--out", f"{name}.key"), ["university", "holder", "friend", "stranger"]))
        run("accredit", *node_opt, "--key", "authority.key", "--issuer", "university.key",
            "--name", "Example University", "--scope", "degree")
        (d / "claims.json").write_text('{"degree": "BSc", "field": "Logistics", "awarded": "2009"}')
        (d / "skill.json").write_text('{"skill": "Forklift operation", "years": 5}')

        def issue(key: str, rtype: str, claims: str, out: str, *extra: str) -> None:
            run("issue", *node_opt, "--key", key, "--holder", holder, "--type", rtype, "--claims", claims,
                "--out", out, *extra)

        def valid() -> None:
            issue("university.key", "degree", "claims.json", "record.json", "--expires", EXPIRES)
            run("endorse", *node_opt, "--key", "friend.key", "--record", "record.json")
            run("prove", *node_opt, "--record", "record.json", "--reveal", "degree,field", "--out", "valid.json")
            run("export", *node_opt, "--record", "record.json", "--reveal", "degree,field", "--key", "university.key",
                "--out", "credential.json")

        def revoked() -> int:
            issue("university.key", "degree", "claims.json", "record2.json")
            out = run("revoke", *node_opt, "--key", "university.key", "--record", "record2.json",
                      "--reason", "issued in error")
            run("prove", *node_opt, "--record", "record2.json", "--reveal", "degree", "--out", "revoked.json")
            return int(re.search(r" at block (\d+):", out).group(1))  # type: ignore[union-attr]

        def self_asserted() -> None:
            issue("holder.key", "skill", "skill.json", "self-record.json")
            run("prove", *node_opt, "--record", "self-record.json", "--reveal", "skill,years", "--out", "self.json")

        def unaccredited() -> None:
            issue("stranger.key", "degree", "claims.json", "stranger-record.json")
            run("prove", *node_opt, "--record", "stranger-record.json", "--reveal", "degree",
                "--out", "unaccredited.json")

        revoked_job = pool.submit(revoked)
        others = [pool.submit(job) for job in (valid, self_asserted, unaccredited)]
        revoked_at = revoked_job.result()
        for job in others:
            job.result()

        data = (d / "valid.json").read_bytes()
        assert data.count(b'"value":"BSc"') == 1
        (d / "tampered.json").write_bytes(data.replace(b'"value":"BSc"', b'"value":"MSc"'))
        forged = json.loads((d / "credential.json").read_text())
        assert forged["credentialSubject"]["ler:claims"]["degree"] == "BSc"
        forged["credentialSubject"]["ler:claims"]["degree"] = "MSc"
        (d / "forged.json").write_text(json.dumps(forged, indent=2))

        yield Ledger(node=node, folder=d, genesis=Genesis.load(d / "genesis.json"), university=university,
                     holder=holder, friend=friend, stranger=stranger, revoked_at=revoked_at,
                     valid=d / "valid.json", tampered=d / "tampered.json", revoked=d / "revoked.json",
                     self_asserted=d / "self.json", unaccredited=d / "unaccredited.json",
                     credential=d / "credential.json", forged=d / "forged.json")
    finally:
        pool.shutdown(wait=True)
        node.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium_browser(tmp_path_factory.mktemp("browser-home")) as b:
        yield b


def open_page(browser: Any, ledger: Ledger, **context_options: Any) -> Any:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, **context_options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    page.goto(ledger.page_url)
    expect(page.locator("#network")).to_contain_text(f"“{CHAIN_ID}”")
    return page


@pytest.fixture
def page(browser: Any, ledger: Ledger) -> Iterator[Any]:
    p = open_page(browser, ledger)
    yield p
    assert p.errors == [], p.errors  # no script error, no blocked or failed request
    p.context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def check(page: Any, path: Path) -> str:
    """Choose `path` with the file input; the verdict heading's text once the result is shown.

    The page's change handler marks the result busy and clears it before it first awaits anything, and
    set_input_files returns after that handler ran: an earlier verdict can never be read as this one's.
    """
    page.set_input_files("#file-input", str(path))
    return shown_verdict(page)


def shown_verdict(page: Any) -> str:
    expect(page.locator("#result")).to_have_attribute("aria-busy", "false")
    title = page.locator("#verdict-title")
    expect(title).to_be_visible()
    return " ".join(str(title.text_content()).split()).removeprefix("Verdict: ")


def fact(page: Any, term: str) -> str:
    """The text given for `term` in the record's list of facts (the first record's)."""
    return " ".join(str(page.locator(f"dl.facts dt:text-is('{term}') + dd").first.inner_text()).split())


def result_text(page: Any) -> str:
    return str(page.locator("#result").inner_text())


# --- served by the node --------------------------------------------------------------------------------

def test_the_node_serves_the_page_and_nothing_comes_from_elsewhere(ledger: Ledger) -> None:
    r = http(ledger.node.url, "GET", "/verify")
    assert r.status == 200, ("add_verify_page(app) is not wired into node/api.py make_app", r)
    assert r.content_type == "text/html"
    html = r.body.decode()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sorted(refs) == ["#main", "data:,", "static/verify.css", "static/verify.js"]
    for name, ctype in (("verify.js", "text/javascript"), ("verify.css", "text/css")):
        asset = http(ledger.node.url, "GET", "/static/" + name)
        assert asset.status == 200 and asset.content_type == ctype
        assert not re.search(rb"https?:|//[a-z0-9]|@import|url\(", asset.body.replace(b"data:,", b"")), name
    assert http(ledger.node.url, "GET", "/static/..%2fapi.py").status == 404
    assert http(ledger.node.url, "GET", "/static/missing.js").status == 404


def test_the_page_says_which_network_it_checks_against(page: Any, ledger: Ledger) -> None:
    line = page.locator("#network")
    expect(line).to_contain_text(f"network “{CHAIN_ID}”")
    expect(line).to_contain_text("National Accreditation Board")
    expect(line).to_contain_text(ledger.genesis.hash.hex()[:16])
    assert page.locator("main h1").inner_text() == "Check a record you were given"
    assert page.locator("header").count() == 1 and page.locator("main").count() == 1


# --- the four bundles the ledger made -----------------------------------------------------------------

def test_valid_accredited_record(page: Any, ledger: Ledger, tmp_path: Path) -> None:
    assert check(page, ledger.valid) == "VALID"
    text = result_text(page)
    assert "Genuine: issued by an accredited issuer, and not revoked." in text
    assert "Example University" in text and ledger.university in text
    assert f"Accredited by the authorities of network “{CHAIN_ID}” for: degree." in text
    assert "degree: BSc" in text and "field: Logistics" in text
    assert "awarded — hidden by the holder" in text and "2009" not in text
    assert "A personal endorsement, not an accreditation" in text and ledger.friend in text
    assert fact(page, "Valid until") == "31 December 2099 at 23:59 UTC"
    assert fact(page, "Issued by").startswith("Example University")
    as_of = json.loads(ledger.valid.read_text())["head"]["header"]["height"]
    assert f"Not revoked, as of block {as_of}" in text and f"As of block {as_of}, " in text
    checks = page.locator(".checks li")
    assert checks.count() >= 8 and page.locator(".checks li.check-fail").count() == 0
    assert "Passed" in checks.first.inner_text()
    page.screenshot(path=str(tmp_path / "valid.png"), full_page=True)
    assert (tmp_path / "valid.png").stat().st_size > 20_000


def test_tampered_copy(page: Any, ledger: Ledger) -> None:
    assert check(page, ledger.tampered) == "TAMPERED"
    text = result_text(page)
    assert "Do not rely on anything in it." in text
    assert "What failed: disclosed claims do not match the record" in text
    assert "MSc" not in text and "VALID" not in text
    assert page.locator(".checks li.check-fail").count() >= 1


def test_revoked_record(page: Any, ledger: Ledger, tmp_path: Path) -> None:
    assert check(page, ledger.revoked) == "REVOKED"
    text = result_text(page)
    assert f"The issuer revoked this record at block {ledger.revoked_at}. Reason given: “issued in error”." in text
    assert f"REVOKED by the issuer at block {ledger.revoked_at}. Reason: “issued in error”" in text
    assert "Example University" in text
    assert "awarded — hidden by the holder" in text and "field — hidden by the holder" in text
    failed = page.locator(".checks li.check-fail")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Failed")
    expect(failed).to_contain_text("Not revoked")
    page.screenshot(path=str(tmp_path / "revoked.png"), full_page=True)
    assert (tmp_path / "revoked.png").stat().st_size > 20_000


def test_self_asserted_record(page: Any, ledger: Ledger) -> None:
    assert check(page, ledger.self_asserted) == "SELF-ASSERTED"
    text = result_text(page)
    assert "The holder wrote this record about themselves" in text
    assert "The holder themselves (self-asserted)" in text
    assert "None: self-asserted. No accredited issuer vouches for this record." in text
    assert "skill: Forklift operation" in text and "years: 5" in text
    assert "Example University" not in text


def test_unaccredited_issuer(page: Any, ledger: Ledger) -> None:
    assert check(page, ledger.unaccredited) == "NOT ACCREDITED"
    text = result_text(page)
    assert "An unregistered issuer (no name on the ledger)" in text and ledger.stranger in text
    assert "not accredited for this kind of record" in text
    # and why: the signer is no issuer the ledger knows (not merely one accredited for other records)
    assert f"{ledger.stranger} was no registered issuer when the record was anchored (block " in text


def test_one_page_checks_one_file_after_another(page: Any, ledger: Ledger) -> None:
    for path, verdict in ((ledger.revoked, "REVOKED"), (ledger.valid, "VALID"), (ledger.tampered, "TAMPERED"),
                          (ledger.valid, "VALID")):
        assert check(page, path) == verdict


def test_a_stack_of_records_each_verified_on_its_own(page: Any, ledger: Ledger, tmp_path: Path) -> None:
    """The holder's records from one bundle (POST /v1/bundles): the worst verdict leads, each is shown."""
    items = []
    for name, reveal in (("record.json", ["degree"]), ("record2.json", ["degree", "field"])):
        doc = RecordDocument.load(ledger.folder / name)
        items.append({"record_id": doc.record_id.hex(), "disclosure": doc.disclose(reveal).to_json()})
    r = ledger.node.post_json("/v1/bundles", {"records": items})
    assert r.status == 200, r
    (tmp_path / "stack.json").write_bytes(r.body)
    assert check(page, tmp_path / "stack.json") == "REVOKED"
    text = result_text(page)
    assert "2 records in this file: 1 revoked, 1 valid. Each is shown below." in text
    headings = page.locator(".record h3")
    expect(headings.nth(0)).to_contain_text("Record 1 of 2")
    expect(headings.nth(0)).to_contain_text("VALID")
    expect(headings.nth(1)).to_contain_text("Record 2 of 2")
    expect(headings.nth(1)).to_contain_text("REVOKED")
    assert "Not revoked (record 1)" in text and "Not revoked (record 2)" in text


def test_a_stack_with_a_tampered_record_says_what_failed_in_that_record(page: Any, ledger: Ledger,
                                                                        tmp_path: Path) -> None:
    """Record 1 revoked, record 2 altered (its endorsement shown twice): what failed is record 2's fault,
    not record 1's revocation check, which failed too but only makes it revoked."""
    items = []
    for name in ("record2.json", "record.json"):
        doc = RecordDocument.load(ledger.folder / name)
        items.append({"record_id": doc.record_id.hex(), "disclosure": doc.disclose(["degree"]).to_json()})
    r = ledger.node.post_json("/v1/bundles", {"records": items})
    assert r.status == 200, r
    obj = json.loads(r.body)
    assert len(obj["records"][1]["endorsements"]) == 1
    obj["records"][1]["endorsements"] *= 2
    (tmp_path / "stack.json").write_bytes(rfc8785.dumps(obj))
    assert check(page, tmp_path / "stack.json") == "TAMPERED"
    text = result_text(page)
    assert "What failed: " in text and "appears more than once" in text.split("What failed: ", 1)[1].split("\n")[0]


# --- verdicts the verifier gives for a later clock or another network ------------------------------------

def serve_result(page: Any, result: dict[str, Any]) -> None:
    """Answer the page's POST v1/verify with `result` (as the node would put it), once."""
    page.route("**/v1/verify", lambda route: route.fulfill(status=200, content_type="application/json",
                                                          body=json.dumps(result)))


def test_expired_and_wrong_network(page: Any, ledger: Ledger) -> None:
    data = ledger.valid.read_bytes()
    later = verify_bundle(data, ledger.genesis, now_ms=4_102_531_200_000)  # 2100-01-02
    assert later.verdict == "expired"
    serve_result(page, later.to_json())
    assert check(page, ledger.valid) == "EXPIRED"
    assert "The record expired on 31 December 2099" in result_text(page)

    other = Genesis(format=GENESIS_FORMAT, chain_id="another-network", genesis_time=1_700_000_000_000,
                    authorities=(GenesisAuthority(KeyPair.generate().did, "Another Board"),), issuers=())
    elsewhere = verify_bundle(data, other)
    assert elsewhere.verdict == "wrong-network"
    page.unroute("**/v1/verify")
    serve_result(page, elsewhere.to_json())
    assert check(page, ledger.valid) == "WRONG NETWORK"
    text = result_text(page)
    assert (f"This proof was made for another network that is also called “{CHAIN_ID}”: its genesis file is "
            "not the one this node checks against.") in text

    page.unroute("**/v1/verify")
    serve_result(page, elsewhere.to_json() | {"chain_id": "another-network"})  # as for another network's bundle
    assert check(page, ledger.valid) == "WRONG NETWORK"
    assert (f"This proof was made for network “another-network”, not for network “{CHAIN_ID}”, which this node "
            "checks against.") in result_text(page)


def test_a_time_past_what_a_browser_date_holds_is_shown(page: Any, ledger: Ledger) -> None:
    """A record may expire at any u64 time (up to 2^64 - 1 ms, year 584556019); a JavaScript Date ends in
    the year 275760. The page still shows the result, naming the time in words."""
    result = verify_bundle(ledger.valid.read_bytes(), ledger.genesis).to_json()
    assert result["verdict"] == "valid"
    result["records"][0]["expires"] = 2**64 - 1
    serve_result(page, result)
    assert check(page, ledger.valid) == "VALID"
    assert "a time after the year 275760" in result_text(page), result_text(page)


def test_text_from_a_bundle_is_never_markup(browser: Any, ledger: Ledger) -> None:
    """With the CSP switched off, so that only the page's own escaping stands between a bundle and the DOM."""
    page = open_page(browser, ledger, bypass_csp=True)
    try:
        evil = '<img src=x onerror="document.title=\'owned\'"><b>bold</b>'
        result = verify_bundle(ledger.revoked.read_bytes(), ledger.genesis).to_json()
        rec = result["records"][0]
        rec["issuer_name"] = evil
        rec["disclosed"] = {evil: evil}
        rec["hidden_claims"] = [evil]
        rec["revoked"]["reason"] = evil
        rec["endorsements"] = [{"endorser": evil, "height": 1, "digest": None}]
        result["checks"][0]["detail"] = evil
        serve_result(page, result)
        assert check(page, ledger.revoked) == "REVOKED"
        text = result_text(page)
        assert text.count(evil) >= 7
        assert page.locator("#result img, #result b").count() == 0
        assert page.title() != "owned"
    finally:
        page.context.close()


# --- credentials and files that are not proofs -------------------------------------------------------------

def part(page: Any, label: str) -> str:
    """The words the Credential section gives for one of the credential's parts."""
    return " ".join(str(page.locator(f".credential dt:text-is('{label}') + dd").inner_text()).split())


SIGNATURE = "Signature by the issuer\u2019s key"
ISSUER_KEY = "The key is the issuer\u2019s"


def test_an_exported_credential(page: Any, ledger: Ledger) -> None:
    assert check(page, ledger.credential) == "VALID"
    assert part(page, SIGNATURE).startswith("Valid signed by " + ledger.university)
    assert part(page, ISSUER_KEY).startswith("Valid")
    assert part(page, "Validity period").startswith("Valid")
    assert part(page, "Ledger anchor").startswith("Valid: the ledger proof it carries holds")
    text = result_text(page)
    assert "not checked here" not in text and "INVALID" not in text
    # the bundle it carries, shown as a bundle is
    assert "Example University" in text and "degree: BSc" in text and "field: Logistics" in text
    assert "awarded — hidden by the holder" in text and "2009" not in text
    assert fact(page, "Valid until") == "31 December 2099 at 23:59 UTC"
    assert page.locator(".checks li").count() >= 8 and page.locator(".checks li.check-fail").count() == 0
    assert page.locator(".status-bad").count() == 0


def test_a_tampered_credential_names_the_signature(page: Any, ledger: Ledger) -> None:
    assert check(page, ledger.forged) == "INVALID SIGNATURE"
    text = result_text(page)
    assert f"What failed: {SIGNATURE} (the signature does not verify with" in text
    assert part(page, SIGNATURE).startswith("INVALID the signature does not verify")
    assert part(page, "Ledger anchor").startswith("DOES NOT MATCH")
    assert page.locator("[data-part=signature].status-bad").count() == 1
    assert "Do not rely on anything in it." in text and "not checked here" not in text
    # the bundle it carries is untouched and says what was really issued
    assert "degree: BSc" in text and "MSc" not in text


def credential(**extra: Any) -> dict[str, Any]:
    return {"@context": ["https://www.w3.org/ns/credentials/v2"], "type": ["VerifiableCredential"],
            "issuer": "did:key:z6MkExample", "credentialSubject": {"name": "A degree"}, **extra}


def test_unsigned_credentials(page: Any, ledger: Ledger, tmp_path: Path) -> None:
    with_bundle = tmp_path / "credential.json"
    # A bundle's JSON object under "ler:proofBundle", as docs/VC.md carries it, in a credential nobody signed.
    with_bundle.write_text(json.dumps(credential(**{"ler:proofBundle": json.loads(ledger.valid.read_text())}),
                                      indent=2))
    assert check(page, with_bundle) == "INVALID SIGNATURE"
    assert part(page, SIGNATURE).startswith("INVALID the credential carries no proof object")
    assert "degree: BSc" in result_text(page)  # the ledger proof it carries is still shown

    bare = tmp_path / "bare-credential.json"
    bare.write_text(json.dumps(credential()))
    assert check(page, bare) == "INVALID SIGNATURE"
    # the node checks against its genesis: a credential without a ledger proof cannot have the ledger's word
    assert part(page, "Ledger anchor").startswith("NOT ANCHORED")

    odd = tmp_path / "subject-only.json"
    odd.write_text(json.dumps({"credentialSubject": {"name": "A degree"}}))
    assert check(page, odd) == "NOT CHECKED HERE"
    assert "This looks like a credential" in result_text(page)


def test_a_signed_credential_without_a_ledger_proof_is_not_valid(page: Any, ledger: Ledger, tmp_path: Path) -> None:
    # Anyone can sign a credential naming their own did:key as its issuer: a perfect signature, and nothing
    # about the ledger. The node checks against its genesis, so it is not VALID, as with `ler verify --genesis`.
    from ler.vc import sign_credential

    key = KeyPair.generate()
    path = tmp_path / "self-signed.json"
    path.write_text(json.dumps(sign_credential(credential(issuer=key.did, validFrom="2020-01-01T00:00:00Z"), key,
                                               "2024-05-01T12:00:00Z")))
    assert check(page, path) == "NOT VALID"
    assert part(page, SIGNATURE).startswith("Valid")
    assert part(page, ISSUER_KEY).startswith("Valid")
    assert part(page, "Ledger anchor").startswith("NOT ANCHORED")
    assert "not anchored: no ledger proof (ler:proofBundle) travels with this credential" in part(page, "Ledger anchor")
    assert "What failed: Ledger anchor (not anchored: no ledger proof" in result_text(page)
    assert page.locator("[data-part=ledger_anchor].status-bad").count() == 1


def test_a_credential_whose_ledger_proof_fails_leads_with_the_ledger_verdict(page: Any, ledger: Ledger) -> None:
    from ler.vc import verify_ler_credential

    report = verify_ler_credential(json.loads(ledger.credential.read_text()), ledger.genesis,
                                   now_ms=4_102_531_200_000).to_json()  # 2100-01-02: the record expired
    assert report["valid"] is False and report["parts"]["ledger_anchor"] == "expired"
    serve_result(page, report)
    assert check(page, ledger.credential) == "EXPIRED"
    assert "The record expired on 31 December 2099" in result_text(page)
    assert part(page, "Ledger anchor").startswith("EXPIRED")


def test_text_from_a_credential_is_never_markup(browser: Any, ledger: Ledger) -> None:
    from ler.vc import verify_ler_credential

    page = open_page(browser, ledger, bypass_csp=True)
    try:
        evil = '<img src=x onerror="document.title=\'owned\'"><b>bold</b>'
        report = verify_ler_credential(json.loads(ledger.forged.read_text()), ledger.genesis).to_json()
        report["name"] = report["issuer_name"] = report["issuer"] = evil
        report["signature"]["checks"][-1]["detail"] = evil
        report["checks"] = [c | {"detail": evil} for c in report["checks"]]
        report["ledger"]["records"][0]["disclosed"] = {evil: evil}
        serve_result(page, report)
        assert check(page, ledger.forged) == "INVALID SIGNATURE"
        assert result_text(page).count(evil) >= 6
        assert page.locator("#result img, #result b").count() == 0
        assert page.title() != "owned"
    finally:
        page.context.close()


def test_files_that_are_not_proofs(page: Any, tmp_path: Path) -> None:
    (tmp_path / "letter.txt").write_text("Dear employer, I have a degree.")
    assert check(page, tmp_path / "letter.txt") == "NOT A PROOF FILE"
    (tmp_path / "other.json").write_text('{"name": "something else"}')
    assert check(page, tmp_path / "other.json") == "NOT A PROOF FILE"
    assert "What the node found:" in result_text(page)


# --- a person's ways in: keyboard, drag and drop, zoom, assistive technology ----------------------------------

def test_keyboard_only(page: Any, ledger: Ledger) -> None:
    """Tab to the button, Enter opens the file chooser, and the result takes the focus."""
    # Playwright turns on file-chooser interception without waiting for the browser to confirm it; a listener
    # in place before the key presses (each a round trip) means the Enter below cannot outrun it.
    page.on("filechooser", lambda _chooser: None)
    visited = []
    for _ in range(3):
        page.keyboard.press("Tab")
        visited.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
        if visited[-1] == "choose-button":
            break
    assert visited == ["skip-link", "choose-button"], visited
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(ledger.valid))
    assert shown_verdict(page) == "VALID"
    assert page.evaluate("document.activeElement.id") == "verdict-title"
    live = page.locator("[aria-live=polite]")
    expect(live).to_have_count(1)
    expect(live).to_contain_text("VALID")

    # The skip link leads to the main content.
    page.focus(".skip-link")
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"


def test_drag_and_drop(page: Any, ledger: Ledger) -> None:
    dragging = page.evaluate("""([name, text]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([text], name, {type: "application/json"}));
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: dt, bubbles: true}));
        const shown = zone.classList.contains("dragging");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
        const dropped = !zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                                  cancelable: true}));
        return shown && dropped && !zone.classList.contains("dragging");
    }""", ["revoked.json", ledger.revoked.read_text()])
    assert dragging
    assert shown_verdict(page) == "REVOKED"


def test_reflows_at_200_percent_zoom(browser: Any, ledger: Ledger) -> None:
    """A 1280-pixel window at 200% zoom is 640 CSS pixels wide: nothing may need sideways scrolling."""
    page = open_page(browser, ledger)
    try:
        page.set_viewport_size({"width": 640, "height": 800})
        assert check(page, ledger.valid) == "VALID"
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        button = page.locator("#choose-button").bounding_box()
        assert button is not None and button["height"] >= 24 and button["width"] >= 24
    finally:
        page.context.close()


def test_no_serious_accessibility_violations(browser: Any, ledger: Ledger) -> None:
    axe_js = ensure_axe()
    page = open_page(browser, ledger, bypass_csp=True)  # axe is injected as an inline script
    try:
        found = {"empty page": axe_violations(page, axe_js)}
        for path in (ledger.valid, ledger.revoked, ledger.tampered, ledger.self_asserted, ledger.credential,
                     ledger.forged):
            check(page, path)
            found[path.name] = axe_violations(page, axe_js)
        report = "\n".join(f"{where}:\n{describe_violations(v)}" for where, v in found.items() if v)
        assert not report, report
    finally:
        page.context.close()
