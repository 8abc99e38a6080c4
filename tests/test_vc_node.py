"""`ler export`, `ler import-badge` and `ler present` against a real single-authority node process.

Each command is the `ler` console script in a subprocess, as a user runs it; the node is `ler node run` on
its own LevelDB (tests/node_proc.py). Credentials written are checked with `ler verify` and against the Open
Badges 3.0 required-fields schema.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from node_proc import LER, Chain, NodeProc, init_node, make_chain

from ler import vc
from ler.keys import KeyPair, write_key_file
from ler.record import RecordDocument

pytestmark = pytest.mark.slow

SCHEMA = json.loads((Path(__file__).parent / "data" / "ob3_required.schema.json").read_text())


def ler(*args: str, cwd: Path, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    r = subprocess.run([str(LER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert r.returncode == check, f"ler {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def start(root: Path, chain_id: str) -> tuple[Chain, NodeProc]:
    chain = make_chain(root, chain_id=chain_id, issuer_scopes=("badge", "degree"))
    return chain, NodeProc(init_node(chain, chain.root / "node")).start()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Chain, NodeProc]]:
    chain, node = start(tmp_path_factory.mktemp("vcnode"), "vc-test")
    yield chain, node
    assert node.terminate() == 0, node.log()


def issue(tmp_path: Path, chain: Chain, node: NodeProc, holder: KeyPair) -> Path:
    write_key_file(tmp_path / "holder.key", holder)
    (tmp_path / "claims.json").write_text(json.dumps({"degree": "BSc Physics", "awarded": "AWARDED-1909",
                                                      "grade": "first"}))
    ler("issue", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--holder", holder.did,
        "--type", "degree.bachelor", "--claims", "claims.json", "--out", "record.json", cwd=tmp_path)
    return tmp_path / "record.json"


def test_export_verify_and_present(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    holder = KeyPair.generate()
    issue(tmp_path, chain, node, holder)
    g = str(chain.genesis_path)
    r = ler("export", "--node", node.url, "--record", "record.json", "--reveal", "degree,grade", "--key",
            str(chain.root / "issuer.key"), "--out", "cred.json", "--genesis", g, cwd=tmp_path)
    assert "hidden: awarded" in r.stdout
    cred = json.loads((tmp_path / "cred.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(cred)
    assert "AWARDED-1909" not in (tmp_path / "cred.json").read_text()
    assert cred["credentialSubject"]["ler:claims"] == {"degree": "BSc Physics", "grade": "first"}
    assert cred["issuer"]["name"] == "Genesis University" and cred["credentialSubject"]["id"] == holder.did

    r = ler("verify", "cred.json", cwd=tmp_path)
    assert "ledger anchor: not checked (no --genesis)" in r.stdout.splitlines()[0]
    r = ler("verify", "cred.json", "--genesis", g, cwd=tmp_path)
    assert r.stdout.startswith("VALID: signature: valid; issuer key: valid; validity period: valid; "
                               "ledger anchor: VALID: accredited record")

    # holder binding, for the credential and for a plain bundle
    ler("present", "--credential", "cred.json", "--key", "holder.key", "--challenge", "job-42", "--out",
        "pres.json", cwd=tmp_path)
    ler("verify", "pres.json", "--genesis", g, "--challenge", "job-42", cwd=tmp_path)
    ler("verify", "pres.json", "--genesis", g, "--challenge", "job-43", cwd=tmp_path, check=1)
    ler("prove", "--node", node.url, "--record", "record.json", "--reveal", "degree", "--out", "bundle.json",
        cwd=tmp_path)
    ler("present", "--bundle", "bundle.json", "--key", "holder.key", "--challenge", "job-44", "--out",
        "bpres.json", cwd=tmp_path)
    r = ler("verify", "bpres.json", "--genesis", g, "--challenge", "job-44", cwd=tmp_path)
    assert r.stdout.startswith(f"VALID: presented by its holder {holder.did}")
    r = ler("present", "--bundle", "bundle.json", "--key", str(chain.root / "issuer.key"), "--challenge", "x",
            "--out", "other.json", cwd=tmp_path, check=2)
    assert "not the holder" in r.stderr


def test_export_needs_the_issuers_key(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    issue(tmp_path, chain, node, KeyPair.generate())
    r = ler("export", "--node", node.url, "--record", "record.json", "--key", "holder.key", "--out", "c.json",
            cwd=tmp_path, check=2)
    assert "only the issuer's current key" in r.stderr
    assert not (tmp_path / "c.json").exists()
    r = ler("export", "--node", node.url, "--record", "record.json", "--reveal", "nope", "--key", "holder.key",
            "--out", "c.json", cwd=tmp_path, check=2)
    assert "no claim 'nope'" in r.stderr


def badge(signer: KeyPair) -> dict[str, Any]:
    doc = {"@context": [vc.VC_CONTEXT, vc.OB3_CONTEXT], "id": "urn:uuid:2e1b5f0c-0d4f-4a39-9d77-3f3c9a1e9b01",
           "type": ["VerifiableCredential", "OpenBadgeCredential"],
           "issuer": {"id": signer.did, "type": ["Profile"], "name": "Example Corp"},
           "validFrom": "2024-01-01T00:00:00Z", "validUntil": "2099-01-01T00:00:00Z", "name": "Teamwork Badge",
           "credentialSubject": {"id": "did:example:learner", "type": ["AchievementSubject"], "achievement": {
               "id": "https://example.com/achievements/teamwork", "type": ["Achievement"], "name": "Teamwork",
               "achievementType": "Badge", "description": "Works well in a team.",
               "criteria": {"narrative": "Nominated by peers."}}}}
    return vc.sign_credential(doc, signer, "2024-01-01T00:00:00Z")


def test_import_badge_and_export_it_again(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    holder = KeyPair.generate()
    write_key_file(tmp_path / "holder.key", holder)
    (tmp_path / "badge.json").write_text(json.dumps(badge(KeyPair.generate()), indent=2))
    r = ler("import-badge", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--credential",
            "badge.json", "--holder", holder.did, "--type", "badge.teamwork", "--out", "record.json", "--json",
            cwd=tmp_path)
    result = json.loads(r.stdout)
    assert result["proof_verified"] is True and "eddsa-jcs-2022 proof verified" in result["proof"]
    doc = RecordDocument.load(tmp_path / "record.json")
    assert doc.claim("name").value == "Teamwork" and doc.claim("issuer_name").value == "Example Corp"
    assert doc.expires == 4070908800000     # the badge's validUntil
    assert node.get_json(f"/v1/records/{doc.record_id.hex()}")["standing"] == "accredited"

    g = str(chain.genesis_path)
    ler("export", "--node", node.url, "--record", "record.json", "--key", str(chain.root / "issuer.key"),
        "--out", "again.json", cwd=tmp_path)
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["credentialSubject"]["achievement"]["name"] == "Teamwork"
    assert again["credentialSubject"]["achievement"]["achievementType"] == "Badge"
    jsonschema.Draft202012Validator(SCHEMA).validate(again)
    r = ler("verify", "again.json", "--genesis", g, "--evidence", "credential_file=badge.json", cwd=tmp_path)
    assert "[ok] evidence credential_file" in r.stdout


def test_import_refuses_tampered_and_malformed_badges(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    forged = badge(KeyPair.generate())
    forged["credentialSubject"]["achievement"]["name"] = "Leadership"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    r = ler("import-badge", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--credential",
            "forged.json", "--holder", KeyPair.generate().did, "--type", "badge.x", "--out", "r.json",
            cwd=tmp_path, check=1)
    assert "does not verify" in r.stderr and not (tmp_path / "r.json").exists()
    (tmp_path / "junk.json").write_text(json.dumps({"@context": [vc.VC_CONTEXT], "type": ["VerifiableCredential"]}))
    r = ler("import-badge", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--credential",
            "junk.json", "--holder", KeyPair.generate().did, "--type", "badge.x", "--out", "r.json",
            cwd=tmp_path, check=2)
    assert "not an Open Badges 3.0 credential" in r.stderr and not (tmp_path / "r.json").exists()


def test_export_after_a_key_rotation(tmp_path: Path) -> None:
    chain, node = start(tmp_path / "net", "vc-rotate")
    try:
        issue(tmp_path, chain, node, KeyPair.generate())
        write_key_file(tmp_path / "new.key", KeyPair.generate())
        r = ler("rotate-key", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--new-key", "new.key",
                cwd=tmp_path)
        rotated_at = re.search(r" at block (\d+)", r.stdout + r.stderr)
        assert rotated_at is not None, r.stdout + r.stderr
        # The rotation's block is the head (the new key signs from the next one): the new key is already the
        # one that signs, for issuing and exporting alike, and the retired one is refused by both.
        assert node.get_json("/v1/status")["height"] == int(rotated_at[1])
        for move in ([], ["issue"]):
            if move:  # and so it stays once a later block exists
                ler("issue", "--node", node.url, "--key", "new.key", "--issuer", chain.issuer.did, "--holder",
                    KeyPair.generate().did, "--type", "degree.bachelor", "--claims", "claims.json", "--out",
                    "r2.json", cwd=tmp_path)
            r = ler("export", "--node", node.url, "--record", "record.json", "--key",
                    str(chain.root / "issuer.key"), "--out", "c.json", cwd=tmp_path, check=2)
            assert "only the issuer's current key" in r.stderr and not (tmp_path / "c.json").exists()
            ler("export", "--node", node.url, "--record", "record.json", "--key", "new.key", "--out", "c.json",
                cwd=tmp_path)
            r = ler("verify", "c.json", "--genesis", str(chain.genesis_path), cwd=tmp_path)
            assert "its key after a key rotation" in r.stdout
            if not move:
                (tmp_path / "c.json").unlink()
        cred = json.loads((tmp_path / "c.json").read_text())
        assert cred["issuer"]["id"] == chain.issuer.did
        r = ler("verify", "c.json", cwd=tmp_path, check=1)        # nothing offline ties the new key to the issuer
        assert "issuer key: INVALID" in r.stdout.splitlines()[0]
        r = ler("verify", "c.json", "--genesis", str(chain.genesis_path), cwd=tmp_path)
        assert "its key after a key rotation" in r.stdout
    finally:
        assert node.terminate() == 0, node.log()
