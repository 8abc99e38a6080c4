"""The `ler` command line without a running node daemon.

Real files in tmp_path; node interactions go to an unreachable URL (what each command checks before it
contacts a node). Bundles for `ler verify` come from a real one-block chain built with storage.ChainStore,
so the verifier's output is checked against genuine proofs. Commands against a running node are in
tests/test_e2e_cli.py, with real node processes.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import rfc8785
from click.testing import CliRunner, Result
from node_proc import LER

from ler import keys
from ler.block import PRECOMMIT, CertSig, CommitCertificate, Genesis, Vote
from ler.keys import KeyPair, write_key_file
from ler.record import RecordDocument, make_claims
from ler.tx import RecordAnchor, Tx, sign_tx
from node.cli import Failure, cli, parse_time_ms
from node.client import ClientError

UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LER_KEY_PASSPHRASE", "LER_NODE", "LER_GENESIS", "LER_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def new_key(path: Path, passphrase: str | None = None) -> KeyPair:
    key = KeyPair.generate()
    write_key_file(path, key, passphrase)
    return key


def one_line_error(result: Result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


# --- keys ------------------------------------------------------------------------------------------------

def test_keys_new_writes_0600_and_prints_did(tmp_path: Path) -> None:
    out = tmp_path / "a.key"
    r = run("keys", "new", "--out", str(out))
    assert r.exit_code == 0, r.output
    did = r.stdout.strip()
    assert did.startswith("did:key:z6Mk")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert keys.read_key_file(out).did == did
    assert not keys.is_encrypted(out)

    r = run("keys", "show", "--key", str(out))
    assert r.exit_code == 0 and r.stdout.strip() == did


def test_keys_new_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "a.key"
    run("keys", "new", "--out", str(out))
    before = out.read_bytes()
    r = run("keys", "new", "--out", str(out))
    assert r.exit_code == 2
    assert "already exists" in one_line_error(r)
    assert out.read_bytes() == before


def test_keys_new_encrypted_from_env_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "enc.key"
    r = run("keys", "new", "--out", str(out), "--encrypt", env={"LER_KEY_PASSPHRASE": "correct horse"})
    assert r.exit_code == 0, r.output
    did = r.stdout.strip()
    assert keys.is_encrypted(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert keys.read_key_file(out, "correct horse").did == did
    # show needs no passphrase
    r = run("keys", "show", "--key", str(out))
    assert r.exit_code == 0 and r.stdout.strip() == did


def test_wrong_passphrase_is_one_clear_error(tmp_path: Path) -> None:
    genesis, _ = make_genesis_files(tmp_path)
    enc = tmp_path / "node-enc.key"
    new_key(enc, "right")
    data = tmp_path / "node"
    assert run("node", "init", "--genesis", str(genesis), "--key", str(enc), "--data", str(data)).exit_code == 0
    r = run("node", "run", "--data", str(data), env={"LER_KEY_PASSPHRASE": "wrong"})
    assert r.exit_code == 2
    assert "wrong passphrase" in one_line_error(r)


def test_keys_new_encrypt_prompts_with_confirmation(tmp_path: Path) -> None:
    out = tmp_path / "p.key"
    r = run("keys", "new", "--out", str(out), "--encrypt", input="s3cret\ns3cret\n")
    assert r.exit_code == 0, r.output
    did = r.stdout.strip().splitlines()[-1]
    assert "s3cret" not in r.output  # hidden input is not echoed
    assert keys.read_key_file(out, "s3cret").did == did


def test_keys_new_encrypt_prompt_mismatch_then_eof_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "p.key"
    r = run("keys", "new", "--out", str(out), "--encrypt", input="one\ntwo\n")
    assert r.exit_code == 2
    assert "no passphrase" in r.stderr
    assert "the two passphrases differ" in r.stderr and "Error:" not in r.stderr, r.stderr
    assert not out.exists()


def test_keys_new_encrypt_asks_again_after_a_mismatch_and_keeps_the_agreed_passphrase(tmp_path: Path) -> None:
    out = tmp_path / "p.key"
    r = run("keys", "new", "--out", str(out), "--encrypt", input="one\ntwo\nthree\nthree\n")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("the two passphrases differ") == 1 and "Error:" not in r.stderr, r.stderr
    assert keys.read_key_file(out, "three").did == r.stdout.strip().splitlines()[-1]
    for wrong in ("one", "two"):
        with pytest.raises(keys.KeyFileError, match="wrong passphrase"):
            keys.read_key_file(out, wrong)


def test_keys_show_of_a_non_key_file_is_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text("{}")
    r = run("keys", "show", "--key", str(f))
    assert r.exit_code == 2
    assert "not a ler-key/1 key file" in one_line_error(r)
    r = run("keys", "show", "--key", str(tmp_path / "missing.key"))
    assert r.exit_code == 2 and "not found" in one_line_error(r)


# --- genesis ---------------------------------------------------------------------------------------------

def make_genesis_files(tmp_path: Path, issuer: KeyPair | None = None) -> tuple[Path, Path]:
    auth = tmp_path / "auth.key"
    new_key(auth)
    out = tmp_path / "genesis.json"
    args = ["genesis", "new", "--chain-id", "test-chain", "--authority", str(auth), "--out", str(out)]
    if issuer is not None:
        args += ["--issuer", f"{issuer.did}:Example University:degree"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    return out, auth


def test_genesis_new_names_and_issuers(tmp_path: Path) -> None:
    a1, a2, a3 = new_key(tmp_path / "a1.key"), KeyPair.generate(), KeyPair.generate()
    i1, i2 = KeyPair.generate(), new_key(tmp_path / "i2.key")
    out = tmp_path / "g.json"
    r = run("genesis", "new", "--chain-id", "ler-local", "--authority", str(tmp_path / "a1.key"),
            "--authority", a2.did, "--authority", a3.did, "--name", "First Body", "--name", "Second Body",
            "--issuer", f"{i1.did}:Uni: of Somewhere:degree.bachelor,course,degree",
            "--issuer", f"{tmp_path / 'i2.key'}:Training Co:military-training",
            "--time", "1700000000000", "--out", str(out))
    assert r.exit_code == 0, r.output
    g = Genesis.load(out)
    assert g.format == "ler-genesis/1" and g.chain_id == "ler-local" and g.genesis_time == 1700000000000
    assert [(a.did, a.name) for a in g.authorities] == [
        (a1.did, "First Body"), (a2.did, "Second Body"), (a3.did, "Authority 3")]
    assert [(i.did, i.name, i.scopes) for i in g.issuers] == [
        (i1.did, "Uni: of Somewhere", ("course", "degree", "degree.bachelor")),
        (i2.did, "Training Co", ("military-training",))]
    assert g.hash.hex() in r.stdout


def test_genesis_time_defaults_to_now(tmp_path: Path) -> None:
    import time

    out, _ = make_genesis_files(tmp_path)
    assert abs(Genesis.load(out).genesis_time - time.time() * 1000) < 60_000


@pytest.mark.parametrize("extra, message", [
    (["--authority", "did:key:zNotAKey"], "--authority"),
    (["--authority", "no-such-file.key"], "neither a did:key nor an existing key file"),
    (["--issuer", "did:key:z6MkBad:Name:degree"], "--issuer"),
    (["--issuer", "{did}:Name:Not A Scope"], "scope"),
    (["--issuer", "{did}:Name:"], "no scope"),
    (["--issuer", "{did}:degree"], "DID:NAME:SCOPE"),
    (["--authority", "{did}"], "twice"),
    (["--name", "A", "--name", "B"], "2 --name given for 1 --authority"),
])
def test_genesis_new_bad_input_exits_2(tmp_path: Path, extra: list[str], message: str) -> None:
    key = KeyPair.generate()
    args = ["genesis", "new", "--chain-id", "c1", "--authority", key.did, "--out", str(tmp_path / "g.json")]
    r = run(*args, *[e.format(did=key.did) for e in extra])
    assert r.exit_code == 2, r.output
    assert message in one_line_error(r)
    assert not (tmp_path / "g.json").exists()


def test_genesis_new_bad_chain_id_and_overwrite(tmp_path: Path) -> None:
    did = KeyPair.generate().did
    out = tmp_path / "g.json"
    r = run("genesis", "new", "--chain-id", "bad chain!", "--authority", did, "--out", str(out))
    assert r.exit_code == 2 and "chain id" in one_line_error(r)
    assert run("genesis", "new", "--chain-id", "c1", "--authority", did, "--out", str(out)).exit_code == 0
    r = run("genesis", "new", "--chain-id", "c2", "--authority", did, "--out", str(out))
    assert r.exit_code == 2 and "already exists" in one_line_error(r)
    assert Genesis.load(out).chain_id == "c1"
    r = run("genesis", "new", "--chain-id", "c2", "--authority", did, "--out", str(out), "--force")
    assert r.exit_code == 0 and Genesis.load(out).chain_id == "c2"


# --- node init / run -------------------------------------------------------------------------------------

def test_node_init_creates_the_folder_and_refuses_twice(tmp_path: Path) -> None:
    from node.config import load_config

    genesis, auth = make_genesis_files(tmp_path)
    data = tmp_path / "n1"
    r = run("node", "init", "--genesis", str(genesis), "--key", str(auth), "--data", str(data),
            "--listen", "127.0.0.1:18999", "--role", "observer", "--peer", "http://127.0.0.1:18998/")
    assert r.exit_code == 0, r.output
    for name in ("config.toml", "genesis.json", "node.key"):
        assert (data / name).exists(), name
        assert name in r.stdout
    assert stat.S_IMODE((data / "node.key").stat().st_mode) == 0o600
    assert (data / "genesis.json").read_bytes() == genesis.read_bytes()
    cfg = load_config(data)
    assert (cfg.host, cfg.port, cfg.role, cfg.peers) == ("127.0.0.1", 18999, "observer", ("http://127.0.0.1:18998",))
    assert keys.read_key_file_did(cfg.key_path) == keys.read_key_file_did(auth)

    config_before = (data / "config.toml").read_text()
    r = run("node", "init", "--genesis", str(genesis), "--key", str(auth), "--data", str(data))
    assert r.exit_code == 2
    assert "already initialised" in one_line_error(r)
    assert (data / "config.toml").read_text() == config_before


def test_node_init_notes_a_key_that_is_not_a_genesis_authority(tmp_path: Path) -> None:
    genesis, _ = make_genesis_files(tmp_path)
    other = tmp_path / "other.key"
    new_key(other)
    r = run("node", "init", "--genesis", str(genesis), "--key", str(other), "--data", str(tmp_path / "n"))
    assert r.exit_code == 0
    assert "not a genesis authority" in r.stderr


def test_node_init_notes_a_key_already_used_by_a_node_folder_beside_it(tmp_path: Path) -> None:
    """A key copied to a second node (a copied command line, say) is named at init, before either runs."""
    genesis, auth = make_genesis_files(tmp_path)
    nodes = tmp_path / "nodes"
    assert run("node", "init", "--genesis", str(genesis), "--key", str(auth), "--data", str(nodes / "a"),
               "--listen", "127.0.0.1:18991").exit_code == 0
    (nodes / "not-a-node").mkdir()
    (nodes / "junk").write_text("x")
    (nodes / "bad").mkdir()
    (nodes / "bad" / "node.key").write_text("not a key")
    r = run("node", "init", "--genesis", str(genesis), "--key", str(auth), "--data", str(nodes / "b"),
            "--listen", "127.0.0.1:18992")
    assert r.exit_code == 0, r.output
    did = keys.read_key_file_did(auth)
    assert f"note: {did} is also the key of the node folder {nodes / 'a'}" in r.stderr, r.stderr
    assert r.stderr.count("is also the key") == 1 and (nodes / "b" / "node.key").exists()
    other = tmp_path / "other.key"
    new_key(other)
    r = run("node", "init", "--genesis", str(genesis), "--key", str(other), "--data", str(nodes / "c"),
            "--listen", "127.0.0.1:18993")
    assert r.exit_code == 0 and "is also the key" not in r.stderr, r.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--listen", "nonsense", "HOST:PORT"),
    ("--genesis", "missing.json", "genesis"),
    ("--key", "missing.key", "not found"),
    ("--peer", "ftp://x", "http://HOST:PORT"),
    ("--peer", "http://127.0.0.1:99999", "a port from 1 to 65535"),
    ("--peer", "http://[::1", "a port from 1 to 65535"),
    ("--peer", "http://127.0.0.1:8702?x=1", "must have no query (?...) or fragment (#...)"),
    ("--listen", "127.0.0.1:0", "out of range"),
])
def test_node_init_bad_input(tmp_path: Path, flag: str, value: str, message: str) -> None:
    genesis, auth = make_genesis_files(tmp_path)
    args = {"--genesis": str(genesis), "--key": str(auth), "--data": str(tmp_path / "n")}
    extra: list[str] = []
    if flag in args:
        args[flag] = str(tmp_path / value)
    else:
        extra = [flag, value]
    r = run("node", "init", *[x for kv in args.items() for x in kv], *extra)
    assert r.exit_code == 2, r.output
    assert message in one_line_error(r)
    assert not (tmp_path / "n" / "config.toml").exists()


def test_node_init_takes_a_peer_as_url_and_did(tmp_path: Path) -> None:
    """`--peer URL#DID`: the did is no fragment of the URL, which alone must be a node's base URL."""
    from node.config import load_config

    genesis, auth = make_genesis_files(tmp_path)
    did = keys.read_key_file_did(auth)
    r = run("node", "init", "--genesis", str(genesis), "--key", str(auth), "--data", str(tmp_path / "n"),
            "--peer", f"http://127.0.0.1:18998/#{did}")
    assert r.exit_code == 0, r.output
    assert [(p.url, p.did) for p in load_config(tmp_path / "n").peer_nodes] == [("http://127.0.0.1:18998", did)]


def test_node_run_without_a_data_folder_is_bad_usage(tmp_path: Path) -> None:
    r = run("node", "run", "--data", str(tmp_path / "nowhere"))
    assert r.exit_code == 2
    assert "ler node init" in one_line_error(r)


# --- help ------------------------------------------------------------------------------------------------

def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


ALL_COMMANDS = [(), *_all_commands(cli)]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "ler")
def test_help_for_every_command(path: tuple[str, ...]) -> None:
    r = run(*path, "--help")
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout


def test_the_documented_commands_exist() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    for want in ("keys new", "keys show", "genesis new", "node init", "node run", "accredit", "suspend",
                 "reinstate", "withdraw", "authority add", "authority remove", "issue", "revoke", "endorse",
                 "rotate-key", "prove", "verify", "status"):
        assert want in names, want


def test_bad_flags_exit_2_with_one_line() -> None:
    r = run("keys", "new", "--no-such-flag")
    assert r.exit_code == 2
    assert "--no-such-flag" in one_line_error(r)
    r = run("no-such-command")
    assert r.exit_code == 2


# --- verify ----------------------------------------------------------------------------------------------

def test_verify_with_missing_genesis_is_bad_usage(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text("{}")
    r = run("verify", str(bundle), "--genesis", str(tmp_path / "missing.json"))
    assert r.exit_code == 2
    assert "genesis" in one_line_error(r)


@pytest.mark.parametrize("content", ['{"degree": "BSc", "awarded": "2009"}', '{"genesis_hash": "x", "records": []}',
                                     "[1, 2]"])
def test_another_file_given_as_the_genesis_file_is_named_so(tmp_path: Path, content: str) -> None:
    """A claims file, a bundle or anything else given as --genesis: "not a genesis file", not the first
    field such a file lacks or has too many."""
    bundle, wrong = tmp_path / "b.json", tmp_path / "claims.json"
    bundle.write_text("{}")
    wrong.write_text(content)
    for args in (["verify", str(bundle), "--genesis", str(wrong)],
                 ["node", "init", "--genesis", str(wrong), "--key", str(wrong), "--data", str(tmp_path / "d")]):
        r = run(*args)
        assert r.exit_code == 2 and f"{wrong} is not a genesis file" in one_line_error(r), (args, r.output)


def test_verify_garbage_bundle_is_tampered(tmp_path: Path) -> None:
    genesis, _ = make_genesis_files(tmp_path)
    bundle = tmp_path / "b.json"
    bundle.write_bytes(b"\x00\xffnot json at all")
    r = run("verify", str(bundle), "--genesis", str(genesis))
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0].startswith("TAMPERED:")
    assert "tampered" in r.output.lower()
    assert "[FAIL] format" in r.stdout

    r = run("verify", str(bundle), "--genesis", str(genesis), "--json")
    assert r.exit_code == 1
    obj = json.loads(r.stdout)
    assert obj["verdict"] == "tampered" and obj["valid"] is False


@pytest.mark.parametrize("extra", [[], ["--json"], ["--challenge", "c-1"], ["--evidence", "k=x"]])
def test_verify_a_file_that_cannot_be_read_is_bad_usage_not_tampered(tmp_path: Path, extra: list[str]) -> None:
    """A missing file or a folder is a mistake of the caller, whatever it was meant to be (bundle,
    credential, presentation): one error line and exit 2, with or without --genesis, never TAMPERED."""
    genesis, _ = make_genesis_files(tmp_path)
    for path, why in ((tmp_path / "nope.json", "No such file or directory"), (tmp_path, "Is a directory")):
        for with_genesis in ([], ["--genesis", str(genesis)]):
            r = run("verify", str(path), *with_genesis, *extra)
            assert r.exit_code == 2, r.output
            assert one_line_error(r) == f"error: cannot read {path}: {why}"
            assert r.stdout == ""


def test_verify_genesis_from_env(tmp_path: Path) -> None:
    genesis, _ = make_genesis_files(tmp_path)
    bundle = tmp_path / "b.json"
    bundle.write_text("[]")
    r = run("verify", str(bundle), env={"LER_GENESIS": str(genesis)})
    assert r.exit_code == 1 and "TAMPERED" in r.stdout


class Chain:
    """A one-block chain (one authority, one genesis issuer) with one anchored record."""

    def __init__(self, tmp_path: Path, claims: dict[str, Any], revoke: str | None = None) -> None:
        from storage.bundles import build_bundle
        from storage.chain import ChainStore

        self.authority, self.issuer, self.holder = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
        self.genesis_path = tmp_path / "chain-genesis.json"
        r = run("genesis", "new", "--chain-id", "chain-1", "--authority", self.authority.did,
                "--name", "The Accreditor", "--issuer", f"{self.issuer.did}:Example University:degree",
                "--time", "1700000000000", "--out", str(self.genesis_path))
        assert r.exit_code == 0, r.output
        self.genesis = Genesis.load(self.genesis_path)
        self.doc = RecordDocument(chain_id="chain-1", record_id=os.urandom(16), issuer=self.issuer.did,
                                  holder=self.holder.did, rtype="degree.bachelor", expires=None,
                                  claims=make_claims(claims))
        anchor = sign_tx(self.issuer, "chain-1", RecordAnchor(
            record=self.doc.record_id, issuer=self.issuer.did, holder=self.holder.did, rtype="degree.bachelor",
            commitment=self.doc.commitment, expires=None))
        txs: list[list[Tx]] = [[anchor]]
        if revoke:
            from ler.tx import RecordRevoke

            txs.append([sign_tx(self.issuer, "chain-1", RecordRevoke(record=self.doc.record_id, reason=revoke))])
        self.store = ChainStore(tmp_path / "db", self.genesis)
        last_cert = None
        for h, batch in enumerate(txs, start=1):
            block, result = self.store.make_block(batch, 1700000000000 + h * 1000, 0,
                                                  self.authority.public_key, last_cert)
            assert len(result.applied) == len(batch), result.rejected
            vote = Vote.make(self.authority, "chain-1", PRECOMMIT, h, 0, block.hash)
            last_cert = CommitCertificate(height=h, round=0, block=block.hash,
                                          sigs=(CertSig(validator=self.authority.public_key, sig=vote.sig),))
            self.store.commit_block(block, last_cert, result)
        self._build = build_bundle

    def bundle_file(self, path: Path, reveal: list[str]) -> Path:
        bundle = self._build(self.store, [(self.doc.record_id, self.doc.disclose(reveal))])
        data = bundle.dumps()
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def chain_factory(tmp_path: Path) -> Iterator[Callable[..., Chain]]:
    made: list[Chain] = []

    def make(claims: dict[str, Any], revoke: str | None = None) -> Chain:
        sub = tmp_path / f"chain{len(made)}"
        sub.mkdir()
        c = Chain(sub, claims, revoke)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_verify_valid_bundle_human_output(tmp_path: Path, chain_factory: Callable[..., Chain]) -> None:
    evidence = tmp_path / "thesis.pdf"
    evidence.write_bytes(b"%PDF-1.4 a thesis")
    from ler.record import evidence_value

    chain = chain_factory({"degree": "Bachelor of Science", "awarded": 2009, "honours": True,
                           "thesis": evidence_value(evidence, "application/pdf")})
    bundle = chain.bundle_file(tmp_path / "b.json", ["degree", "honours", "thesis"])
    r = run("verify", str(bundle), "--genesis", str(chain.genesis_path), "--evidence", f"thesis={evidence}")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "VALID: accredited record, not revoked, as of block 1 (2023-11-14 22:13:21 UTC)"
    out = r.stdout
    assert "type:      degree.bachelor" in out
    assert f"Example University ({chain.issuer.did})" in out
    assert chain.holder.did in out
    assert "anchored:  block 1" in out
    assert "    degree: Bachelor of Science" in out
    assert "    honours: true" in out
    assert "    thesis: file thesis.pdf (application/pdf)" in out
    assert "hidden:    awarded (not disclosed by the holder)" in out
    assert "2009" not in out
    assert "  [ok] head committed:" in out
    assert "  [ok] evidence thesis:" in out
    assert "[FAIL]" not in out

    r = run("verify", str(bundle), "--genesis", str(chain.genesis_path), "--json")
    assert r.exit_code == 0
    obj = json.loads(r.stdout)
    assert obj["verdict"] == "valid" and obj["as_of"]["height"] == 1
    assert obj["records"][0]["disclosed"]["degree"] == "Bachelor of Science"

    other = tmp_path / "other.pdf"
    other.write_bytes(b"not the thesis")
    r = run("verify", str(bundle), "--genesis", str(chain.genesis_path), "--evidence", f"thesis={other}")
    assert r.exit_code == 1
    assert "[FAIL] evidence thesis" in r.stdout


def test_evidence_that_fails_fails_the_verdict(tmp_path: Path, chain_factory: Callable[..., Chain]) -> None:
    """A file that does not match its claim, or names no disclosed claim, fails the headline and the JSON verdict
    too, not only the exit status; with every file matching, the bundle's own verdict stands."""
    evidence = tmp_path / "thesis.pdf"
    evidence.write_bytes(b"%PDF-1.4 a thesis")
    other = tmp_path / "other.pdf"
    other.write_bytes(b"not the thesis")
    from ler.record import evidence_value

    chain = chain_factory({"degree": "BSc", "thesis": evidence_value(evidence, "application/pdf")})
    bundle = chain.bundle_file(tmp_path / "b.json", ["degree", "thesis"])
    g = str(chain.genesis_path)
    for spec, why in ((f"thesis={other}", f"evidence thesis: {other} does not match the file the record commits to"),
                      (f"nothere={evidence}", f"evidence nothere: no disclosed claim named 'nothere' to compare "
                                              f"{evidence} with"),
                      (f"degree={evidence}", "evidence degree: the claim 'degree' is not evidence of a file (it has "
                                             f"no SHA-256 to compare {evidence} with; `ler issue --evidence` "
                                             "makes such claims)")):
        r = run("verify", str(bundle), "--genesis", g, "--evidence", spec)
        assert r.exit_code == 1
        head = r.stdout.splitlines()[0]
        assert head.startswith(f"EVIDENCE MISMATCH: {why}; the bundle alone: VALID: accredited record"), head
        r = run("verify", str(bundle), "--genesis", g, "--evidence", spec, "--json")
        obj = json.loads(r.stdout)
        assert r.exit_code == 1 and obj["verdict"] == "evidence-mismatch" and obj["valid"] is False
        assert [e["pass"] for e in obj["evidence"]] == [False]
        # one good file does not make up for a bad one
        r = run("verify", str(bundle), "--genesis", g, "--evidence", f"thesis={evidence}", "--evidence", spec,
                "--json")
        assert r.exit_code == 1 and json.loads(r.stdout)["verdict"] == "evidence-mismatch"
    r = run("verify", str(bundle), "--genesis", g, "--evidence", f"thesis={evidence}", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["verdict"] == "valid"

    # a worse verdict of the bundle itself stays in front
    revoked = chain_factory({"thesis": evidence_value(evidence, "application/pdf")}, revoke="issued in error")
    rb = revoked.bundle_file(tmp_path / "rb.json", ["thesis"])
    r = run("verify", str(rb), "--genesis", str(revoked.genesis_path), "--evidence", f"thesis={other}", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["verdict"] == "revoked"


def test_verify_tampered_revoked_and_wrong_network(tmp_path: Path, chain_factory: Callable[..., Chain]) -> None:
    chain = chain_factory({"degree": "BSc", "awarded": 2009})
    bundle = chain.bundle_file(tmp_path / "b.json", ["degree"])
    obj = json.loads(bundle.read_text())
    obj["records"][0]["disclosure"]["revealed"][0]["value"] = "PhD"
    forged = tmp_path / "forged.json"
    forged.write_bytes(rfc8785.dumps(obj))  # well-formed, canonical, but the value is not the committed one
    r = run("verify", str(forged), "--genesis", str(chain.genesis_path))
    assert r.exit_code == 1
    assert r.stdout.startswith("TAMPERED: ")
    assert "[FAIL] record" in r.stdout
    forged.write_text(json.dumps(obj))
    r = run("verify", str(forged), "--genesis", str(chain.genesis_path))
    assert r.exit_code == 1 and r.stdout.startswith("TAMPERED: ")

    other_genesis, _ = make_genesis_files(tmp_path)
    r = run("verify", str(bundle), "--genesis", str(other_genesis))
    assert r.exit_code == 1
    assert r.stdout.startswith("WRONG NETWORK: the bundle was made for chain 'chain-1', not for the network of "
                               "this genesis file ('test-chain')")

    # another network with the same chain id: the names are the same, the genesis hashes are not
    twin = tmp_path / "twin-genesis.json"
    r = run("genesis", "new", "--chain-id", "chain-1", "--authority", KeyPair.generate().did, "--out", str(twin))
    assert r.exit_code == 0, r.output
    r = run("verify", str(bundle), "--genesis", str(twin))
    assert r.exit_code == 1
    head = r.stdout.splitlines()[0]
    assert head == ("WRONG NETWORK: the bundle was made for another network that is also named 'chain-1', not for "
                    "the network of this genesis file: their genesis hashes differ (its genesis hash is "
                    f"{chain.genesis.hash.hex()}, the genesis file's is {Genesis.load(twin).hash.hex()})")

    revoked = chain_factory({"degree": "BSc"}, revoke="issued in error")
    rb = revoked.bundle_file(tmp_path / "rb.json", ["degree"])
    r = run("verify", str(rb), "--genesis", str(revoked.genesis_path))
    assert r.exit_code == 1
    assert r.stdout.startswith("REVOKED: revoked by its issuer at block 2: issued in error")
    assert "  REVOKED at block 2: issued in error" in r.stdout
    assert "  [FAIL] not revoked" in r.stdout


def _closed_stdout(*args: str) -> tuple[int, str]:
    """Run `ler ARGS` with a standard output whose reader has already gone (as `| head -1` leaves it once
    head has its line): its exit status and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    try:
        p = subprocess.run([str(LER), *args], stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=60)
    finally:
        os.close(write_end)
    return p.returncode, p.stderr.decode()


def test_a_reader_that_stops_early_changes_no_exit_status(tmp_path: Path,
                                                          chain_factory: Callable[..., Chain]) -> None:
    """`ler verify ok.json --genesis g.json | head -1`: every write to stdout fails (EPIPE), yet the exit
    status is the verdict's and nothing is printed on stderr; likewise for any other command."""
    chain = chain_factory({"degree": "BSc", "awarded": 2009})
    bundle = chain.bundle_file(tmp_path / "b.json", ["degree"])
    genesis = str(chain.genesis_path)
    assert _closed_stdout("verify", str(bundle), "--genesis", genesis) == (0, "")
    assert _closed_stdout("verify", str(bundle), "--genesis", genesis, "--json") == (0, "")
    forged = tmp_path / "forged.json"
    forged.write_bytes(bundle.read_bytes().replace(b'"records"', b'"record5"'))
    assert _closed_stdout("verify", str(forged), "--genesis", genesis) == (1, "")
    assert _closed_stdout("keys", "show", "--key", genesis) == (2, run("keys", "show", "--key", genesis).stderr)
    assert _closed_stdout("--help") == (0, "")
    assert _closed_stdout("keys", "new", "--out", str(tmp_path / "k.key"))[0] == 0
    assert (tmp_path / "k.key").exists()


def test_verify_escapes_control_characters(tmp_path: Path, chain_factory: Callable[..., Chain]) -> None:
    chain = chain_factory({"degree": "BSc\x1b[2J\u202eevil\nVALID: fake"})
    bundle = chain.bundle_file(tmp_path / "b.json", ["degree"])
    r = run("verify", str(bundle), "--genesis", str(chain.genesis_path))
    assert r.exit_code == 0
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout
    assert "BSc\\x1b[2J\\u202eevil\\x0aVALID: fake" in r.stdout
    assert sum(ln.startswith("VALID") for ln in r.stdout.splitlines()) == 1


# --- issue and prove, before any node is contacted --------------------------------------------------------

def issuer_setup(tmp_path: Path) -> tuple[Path, str]:
    key = tmp_path / "issuer.key"
    new_key(key)
    return key, KeyPair.generate().did


@pytest.mark.parametrize("claims, what", [
    ({"gpa": 3.7, "degree": "BSc"}, "claim 'gpa' is a decimal number"),
    ({"scores": {"math": [90, 85.5]}}, "claim 'scores'.math[1] is a decimal number"),
    ({"ok": 1e5}, "claim 'ok' is a decimal number"),
])
def test_issue_rejects_floats_without_contacting_a_node(tmp_path: Path, claims: dict[str, Any],
                                                        what: str) -> None:
    key, holder = issuer_setup(tmp_path)
    cf = tmp_path / "claims.json"
    cf.write_text(json.dumps(claims))
    out = tmp_path / "record.json"
    r = run("issue", "--node", UNREACHABLE, "--key", str(key), "--holder", holder, "--type", "degree",
            "--claims", str(cf), "--out", str(out))
    assert r.exit_code == 2, r.output
    err = one_line_error(r)
    assert what in err and "floats" in err
    assert "reach" not in err
    assert not out.exists()


@pytest.mark.parametrize("content, what", [
    ('{"a": 1, "a": 2}', "appears twice"),
    ("[1, 2]", "JSON object"),
    ("{}", "non-empty"),
    ("{nope", "not valid JSON"),
    ('{"n": NaN}', "decimal number"),
    ('{"big": 123456789012345678901234567890}', "64-bit"),
])
def test_issue_rejects_bad_claims_files(tmp_path: Path, content: str, what: str) -> None:
    key, holder = issuer_setup(tmp_path)
    cf = tmp_path / "claims.json"
    cf.write_text(content)
    r = run("issue", "--node", UNREACHABLE, "--key", str(key), "--holder", holder, "--type", "degree",
            "--claims", str(cf), "--out", str(tmp_path / "r.json"))
    assert r.exit_code == 2, r.output
    assert what in one_line_error(r)


@pytest.mark.parametrize("flag, value, what", [
    ("--holder", "did:example:123", "--holder"),
    ("--type", "Not A Type", "record type"),
    ("--expires", "2001-01-01", "already past"),
    ("--expires", "next tuesday", "ISO date"),
    ("--expires", "99999999999999999999", "--expires '99999999999999999999' is out of range"),
    ("--expires", "18446744073709551616", "at most 18446744073709551615 ms"),
    ("--evidence", "file=missing.bin", "cannot read"),
    ("--evidence", "degree=claims.json", "already"),
    ("--node", "localhost:8701", "http://HOST:PORT"),
])
def test_issue_rejects_bad_arguments_before_the_node(tmp_path: Path, flag: str, value: str, what: str) -> None:
    key, holder = issuer_setup(tmp_path)
    cf = tmp_path / "claims.json"
    cf.write_text('{"degree": "BSc"}')
    args = {"--node": UNREACHABLE, "--key": str(key), "--holder": holder, "--type": "degree",
            "--claims": str(cf), "--out": str(tmp_path / "r.json")}
    if flag == "--evidence":
        value = value.replace("=", f"={tmp_path}/", 1)
    extra = [flag, value] if flag not in args else []
    if flag in args:
        args[flag] = value
    r = run("issue", *[x for kv in args.items() for x in kv], *extra)
    assert r.exit_code == 2, r.output
    assert what in one_line_error(r)


def test_issue_to_a_folder_or_into_a_missing_one_is_bad_usage_before_the_node(tmp_path: Path) -> None:
    key, holder = issuer_setup(tmp_path)
    cf = tmp_path / "claims.json"
    cf.write_text('{"degree": "BSc"}')
    for out, words in ((tmp_path, "is a folder: give the path of the file to write a record file to"),
                       (tmp_path / "nowhere" / "r.json", f"the folder {tmp_path / 'nowhere'} does not exist")):
        r = run("issue", "--node", UNREACHABLE, "--key", str(key), "--holder", holder, "--type", "degree",
                "--claims", str(cf), "--out", str(out))
        assert r.exit_code == 2 and words in one_line_error(r), r.output  # (the node is never reached)


def test_issue_refuses_existing_out_and_reports_unreachable_node(tmp_path: Path) -> None:
    key, holder = issuer_setup(tmp_path)
    cf = tmp_path / "claims.json"
    cf.write_text('{"degree": "BSc"}')
    out = tmp_path / "record.json"
    out.write_text("precious")
    args = ["issue", "--node", UNREACHABLE, "--key", str(key), "--holder", holder, "--type", "degree",
            "--claims", str(cf), "--out", str(out)]
    r = run(*args)
    assert r.exit_code == 2 and "already exists" in one_line_error(r)
    assert out.read_text() == "precious"
    out.unlink()
    r = run(*args)
    assert r.exit_code == 1
    assert "cannot reach node at http://127.0.0.1:9" in one_line_error(r)
    assert not out.exists()


class _Interrupted:
    """A node client whose submission is interrupted (Ctrl-C) while it waits for the commit."""

    url = "http://127.0.0.1:9"

    def status(self) -> dict[str, Any]:
        return {"chain_id": "c1", "height": 3}

    def issuers(self) -> list[dict[str, Any]]:
        return []

    def submit(self, *_: object, **__: object) -> list[dict[str, Any]]:
        raise KeyboardInterrupt


def test_issue_interrupted_while_waiting_keeps_the_record_file_and_says_why(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C once the anchor may be on its way: the record may still commit, and only the file holds its
    salts, so the file stays and the error says so (and which transaction to ask about)."""
    import node.cli

    key, holder = issuer_setup(tmp_path)
    cf = tmp_path / "claims.json"
    cf.write_text('{"degree": "BSc"}')
    out = tmp_path / "record.json"
    monkeypatch.setattr(node.cli, "make_client", lambda url: _Interrupted())
    r = run("issue", "--key", str(key), "--holder", holder, "--type", "degree", "--claims", str(cf),
            "--out", str(out))
    assert r.exit_code == 1, r.output
    line = one_line_error(r)
    assert out.exists(), line
    tx_id = RecordDocument.load(out).anchor_tx.hex()
    assert line.startswith("error: interrupted; the anchor may have reached the node and may still commit, so "
                           f"{out} is kept: ask a node whether transaction {tx_id} committed"), line


class _OtherChain:
    """A node of another network: it answers, but serves chain "ler-testnet", and has none of our records."""

    url = "http://127.0.0.1:8711"

    def status(self) -> dict[str, Any]:
        return {"chain_id": "ler-testnet", "height": 2}

    def bundle(self, *_: object) -> dict[str, Any]:
        raise ClientError("record ... is not on the ledger (as of block 2)", 404)

    def status_proof(self, *_: object) -> dict[str, Any]:
        raise ClientError("record ... is not on the ledger (as of block 2)", 404)


def test_a_node_of_another_network_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     chain_factory: Callable[..., Chain]) -> None:
    """`ler prove`, `revoke`, `endorse` (given the record file) and `verify --refresh` given a node of
    another network say so, rather than that the record is not on the ledger (which reads as if it were
    lost)."""
    import node.cli

    monkeypatch.setattr(node.cli, "make_client", lambda url: _OtherChain())
    record = saved_record(tmp_path)  # of chain "c1"
    r = run("prove", "--node", _OtherChain.url, "--record", str(record), "--reveal", "degree",
            "--out", str(tmp_path / "b.json"))
    assert r.exit_code == 1 and one_line_error(r) == (
        "error: the node at http://127.0.0.1:8711 serves chain 'ler-testnet', and the record is of chain 'c1': "
        "give a node of that network"), r.output
    key = tmp_path / "issuer.key"
    write_key_file(key, KeyPair.generate())
    for args in (["revoke", "--reason", "issued in error"], ["endorse"]):
        r = run(*args, "--node", _OtherChain.url, "--key", str(key), "--record", str(record))
        assert r.exit_code == 1 and one_line_error(r) == (
            "error: the node at http://127.0.0.1:8711 serves chain 'ler-testnet', and the record is of chain "
            "'c1': give a node of that network"), (args, r.output)
    chain = chain_factory({"degree": "BSc"})
    bundle = chain.bundle_file(tmp_path / "bundle.json", ["degree"])
    r = run("verify", str(bundle), "--genesis", str(chain.genesis_path), "--refresh", _OtherChain.url)
    assert r.exit_code == 1 and "REFRESH FAILED" in r.stdout, r.output
    assert "serves chain 'ler-testnet', and the bundle is of chain 'chain-1': give a node of that network" \
        in r.stdout, r.stdout


def saved_record(tmp_path: Path, claims: dict[str, Any] | None = None) -> Path:
    doc = RecordDocument(chain_id="c1", record_id=os.urandom(16), issuer=KeyPair.generate().did,
                         holder=KeyPair.generate().did, rtype="degree", expires=None,
                         claims=make_claims(claims or {"degree": "BSc", "awarded": 2009, "field": "CS"}))
    path = tmp_path / "record.json"
    doc.save(path)
    return path


def test_prove_unknown_claim_is_bad_usage(tmp_path: Path) -> None:
    rec = saved_record(tmp_path)
    r = run("prove", "--node", UNREACHABLE, "--record", str(rec), "--reveal", "degree,gpa",
            "--out", str(tmp_path / "b.json"))
    assert r.exit_code == 2
    err = one_line_error(r)
    assert "'gpa'" in err and "awarded, degree, field" in err
    assert not (tmp_path / "b.json").exists()


def test_prove_needs_reveal_or_reveal_none(tmp_path: Path) -> None:
    rec = saved_record(tmp_path)
    base = ["prove", "--node", UNREACHABLE, "--record", str(rec), "--out", str(tmp_path / "b.json")]
    r = run(*base)
    assert r.exit_code == 2 and "--reveal-none" in one_line_error(r)
    r = run(*base, "--reveal", "")
    assert r.exit_code == 2
    r = run(*base, "--reveal", "degree", "--reveal-none")
    assert r.exit_code == 2 and "not both" in one_line_error(r)
    r = run(*base, "--reveal-none")  # passes local checks, then fails on the node
    assert r.exit_code == 1 and "cannot reach node" in one_line_error(r)


def test_prove_altered_record_file_is_bad_input(tmp_path: Path) -> None:
    rec = saved_record(tmp_path)
    obj = json.loads(rec.read_text())
    obj["claims"][0]["value"] = 2010
    rec.write_text(json.dumps(obj))
    r = run("prove", "--node", UNREACHABLE, "--record", str(rec), "--reveal", "degree",
            "--out", str(tmp_path / "b.json"))
    assert r.exit_code == 2 and "altered" in one_line_error(r)


# --- other commands' local checks ------------------------------------------------------------------------

def test_status_unreachable_is_negative() -> None:
    r = run("status", "--node", UNREACHABLE)
    assert r.exit_code == 1
    assert "cannot reach node at http://127.0.0.1:9" in one_line_error(r)


@pytest.mark.parametrize("args", [["revoke", "--record-id", "00" * 16, "--reason", "x", "--key", "k.key"],
                                  ["testnet", "up", "--dir", "d", "--propose-timeout"]])
@pytest.mark.parametrize("seconds", ["nan", "inf", "1e308", "-1", "0"])
def test_seconds_must_be_a_finite_number_in_range(tmp_path: Path, args: list[str], seconds: str) -> None:
    flag = [] if args[-1] == "--propose-timeout" else ["--timeout"]
    args = [str(tmp_path / "d") if a == "d" else a for a in args]
    r = run(*args, *flag, seconds, env={"LER_NODE": UNREACHABLE})
    assert r.exit_code == 2 and "Invalid value for" in one_line_error(r), r.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:0", "http://[::1",
                                 "http://127.0.0.1:abc", "http://:8701", "127.0.0.1:8701"])
def test_a_malformed_node_url_is_bad_usage(url: str) -> None:
    for r in (run("status", "--node", url), run("status", env={"LER_NODE": url})):
        assert r.exit_code == 2 and "must look like http://HOST:PORT" in one_line_error(r), r.output


@pytest.mark.parametrize("url", ["http://127.0.0.1:9311?x=1", "http://127.0.0.1:9311/?x=1", "http://127.0.0.1:9311?",
                                 "http://127.0.0.1:9311#top", "http://127.0.0.1:9311/v1?x=1"])
def test_a_node_url_with_a_query_or_fragment_is_bad_usage(url: str) -> None:
    """Each request's path would be appended after the query or fragment, and the node asked for
    something else than the command means: refused before any request, saying why."""
    for r in (run("status", "--node", url), run("status", env={"LER_NODE": url})):
        assert r.exit_code == 2 and "must have no query (?...) or fragment (#...)" in one_line_error(r), r.output


@pytest.mark.parametrize("url, base", [
    ("http://127.0.0.1:8701/v1", "http://127.0.0.1:8701"), ("http://127.0.0.1:8701/v1/", "http://127.0.0.1:8701"),
    ("http://127.0.0.1:8701/", "http://127.0.0.1:8701"), ("http://h.example/ler/v1", "http://h.example/ler"),
    ("http://v1", "http://v1"), ("http://v1:8701/", "http://v1:8701"),  # a host named v1 is no API prefix
    ("http://h.example/v1x", "http://h.example/v1x")])
def test_a_node_url_is_taken_without_the_api_prefix(url: str, base: str) -> None:
    from node.client import check_node_url
    assert check_node_url(url) == base


class _StatusOnly:
    """A node as `ler status` sees it: its /v1/status, and /health as given (an exception: none)."""

    url = "http://127.0.0.1:9311"

    def __init__(self, health: dict[str, Any] | Exception) -> None:
        self._health = health

    def status(self) -> dict[str, Any]:
        return {"node": "did:key:z6Mk", "role": "observer", "chain_id": "c", "height": 12, "latest_block": None,
                "mempool": {"txs": 0, "bytes": 0}}

    def health(self) -> dict[str, Any]:
        if isinstance(self._health, Exception):
            raise self._health
        return self._health


DEGRADED = {"ok": True, "status": "degraded", "height": 12, "sync_lag": 0, "last_block_age_s": 40.0, "warnings": [
    {"event": "no_block", "reason": "no block for 40 s while 2 transaction(s) wait"},
    {"event": "voted_in_but_observer", "height": 9, "reason": "this node's key is an authority from that height"}]}


@pytest.mark.parametrize("health, shown", [
    (DEGRADED, ["degraded:     no block for 40 s while 2 transaction(s) wait",
                "degraded:     this node's key is an authority from that height (height 9)"]),
    ({"ok": True, "status": "ok", "warnings": [], "height": 12}, []),
    ({"ok": True, "height": 12, "syncing": False}, []),  # an older node's /health
    (ClientError("cannot reach node at http://127.0.0.1:9311: refused"), [])])
def test_status_shows_what_a_degraded_nodes_health_says(monkeypatch: pytest.MonkeyPatch,
                                                        health: dict[str, Any] | Exception, shown: list[str]) -> None:
    """`ler status` of a degraded node shows each reason /health gives; of a healthy or older node (whose
    /health lacks status and warnings), or one whose /health fails, nothing more than its status."""
    import node.cli

    monkeypatch.setattr(node.cli, "make_client", lambda url: _StatusOnly(health))
    r = run("status")
    assert r.exit_code == 0, r.output
    assert [line for line in r.stdout.splitlines() if line.startswith("degraded:")] == shown
    assert "height:       12" in r.stdout
    as_json = json.loads(run("status", "--json").stdout)
    assert as_json["height"] == 12 and as_json["health"] == (None if isinstance(health, Exception) else health)


@pytest.mark.parametrize("group", [[], ["keys"], ["node"], ["testnet"], ["authority"]])
def test_a_group_given_no_command_shows_its_help_as_help_does(group: list[str]) -> None:
    r = run(*group)
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert r.stderr.startswith("Usage: ") and "\nCommands:\n" in r.stderr and "\\x0a" not in r.stderr, r.stderr
    assert r.stderr == run(*group, "--help").stdout


def test_node_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("status", env={"LER_NODE": UNREACHABLE})
    assert r.exit_code == 1 and "127.0.0.1:9" in one_line_error(r)


@pytest.mark.parametrize("args, what", [
    (["revoke", "--reason", "x"], "--record FILE or --record-id HEX"),
    (["revoke", "--record-id", "abc", "--reason", "x"], "32 hex digits"),
    (["revoke", "--record-id", "00" * 16, "--reason", "  "], "needs a reason"),
    (["endorse", "--record-id", "00" * 16, "--digest", "xyz"], "64 hex digits"),
    (["accredit", "--issuer", "did:key:bad", "--name", "U", "--scope", "degree"], "--issuer"),
    (["accredit", "--issuer", "{did}", "--name", "U", "--scope", "Bad Scope"], "scope"),
    (["accredit", "--issuer", "{did}", "--name", "U", "--scope", "degree", "--until", "soon"], "ISO date"),
    (["accredit", "--issuer", "{did}", "--name", "U", "--scope", "degree", "--until", "2020-01-01"],
     "--until 2020-01-01 is already past (2020-01-01 23:59:59 UTC)"),
    (["accredit", "--issuer", "{did}", "--name", "U", "--scope", "degree", "--until", "1700000000000"],
     "--until 1700000000000 is already past"),
    (["suspend", "--issuer", "nope"], "neither a did:key"),
    (["authority", "add", "--did", "{did}", "--name", ""], "name"),
    (["rotate-key", "--new-key", "{key}"], "same key"),
])
def test_commands_check_input_before_the_node(tmp_path: Path, args: list[str], what: str) -> None:
    key = tmp_path / "k.key"
    did = new_key(key).did
    full = [a.format(did=did, key=key) for a in args]
    r = run(*full[:1] if full[0] != "authority" else full[:2], "--node", UNREACHABLE, "--key", str(key),
            *(full[1:] if full[0] != "authority" else full[2:]))
    assert r.exit_code == 2, r.output
    assert what in one_line_error(r)


def test_parse_time_ms() -> None:
    assert parse_time_ms("1700000000000", "t") == 1700000000000
    assert parse_time_ms("2023-11-14T22:13:20Z", "t") == 1700000000000
    assert parse_time_ms("2023-11-14T22:13:20", "t") == 1700000000000
    assert parse_time_ms("2023-11-14T23:13:20+01:00", "t") == 1700000000000
    assert parse_time_ms("2023-11-14", "t") == parse_time_ms("2023-11-15T00:00:00Z", "t") - 1
    with pytest.raises(Failure) as exc:
        parse_time_ms("yesterday", "--expires")
    assert exc.value.exit_code == 2
    assert parse_time_ms("18446744073709551615", "t") == 2**64 - 1   # the largest time the ledger holds
    for huge in ("18446744073709551616", "99999999999999999999", "9" * 5000):
        with pytest.raises(Failure) as exc:
            parse_time_ms(huge, "--expires")
        assert exc.value.exit_code == 2 and "--expires" in exc.value.message and "out of range" in exc.value.message


# --- files far too large -------------------------------------------------------------------------------

HUGE = 200 * 1024 * 1024  # a sparse file: costs no disk, but reading it whole would cost 200 MB of memory


@pytest.mark.parametrize(("args", "says"), [
    (["verify", "{huge}", "--genesis", "{genesis}"], "larger than anything `ler verify` reads"),
    (["verify", "{bundle}", "--genesis", "{huge}"], "too large for a genesis file"),
    (["prove", "--record", "{huge}", "--reveal", "x", "--out", "{out}"], "too large for a record file"),
    (["keys", "show", "--key", "{huge}"], "too large to be a key file"),
    (["present", "--bundle", "{huge}", "--key", "{key}", "--challenge", "c", "--out", "{out}"], "larger than"),
    (["import-badge", "--credential", "{huge}", "--key", "{key}", "--holder", "{did}", "--type", "badge",
      "--out", "{out}"], "larger than"),
])
def test_a_huge_file_is_refused_without_being_read_whole(tmp_path: Path, args: list[str], says: str) -> None:
    """Every command that reads a file reads at most a little more than it would accept."""
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(HUGE)
    key = KeyPair.generate()
    write_key_file(tmp_path / "k.key", key)
    genesis, _ = make_genesis_files(tmp_path)
    (tmp_path / "b.json").write_text("{}")
    names = {"huge": huge, "genesis": genesis, "bundle": tmp_path / "b.json", "out": tmp_path / "out.json",
             "key": tmp_path / "k.key", "did": key.did}
    # A child's peak memory counts the memory of the process it was forked from (until its exec), so
    # the command is started by a small interpreter of its own, which reports the command's peak.
    r = subprocess.run([sys.executable, "-S", "-c", _PEAK_OF, str(LER), *(a.format(**names) for a in args)],
                       capture_output=True, text=True, env={**os.environ, "LER_NODE": "http://127.0.0.1:9"})
    code, peak_kib = (int(x) for x in r.stderr.rsplit("\n", 2)[-2].split())
    assert code in (1, 2) and says in r.stderr + r.stdout, r.stderr + r.stdout
    assert peak_kib * 1024 < HUGE / 2, f"{peak_kib} KiB resident: the file was read whole"


_PEAK_OF = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=sys.stderr)
"""


# --- pathological JSON and TOML ---------------------------------------------------------------------------
# Python's parsers raise RecursionError for deep nesting and a bare ValueError for an integer of more than
# 4,300 digits, neither a "decode error": each reader must still answer with one line saying what is wrong.

DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_TOML = "a = " + "[" * 5_000 + "]" * 5_000 + "\n"


@pytest.mark.parametrize(("name", "text", "args", "says"), [
    ("claims.json", DEEP_JSON, ["issue", "--key", "{key}", "--holder", "{did}", "--type", "degree", "--claims",
                                "{file}", "--out", "{out}"], "nested too deeply"),
    ("claims.json", '{"n": ' + "9" * 5_000 + "}", ["issue", "--key", "{key}", "--holder", "{did}", "--type",
                                                    "degree", "--claims", "{file}", "--out", "{out}"], "4300 digits"),
    ("b.json", DEEP_JSON, ["present", "--bundle", "{file}", "--key", "{key}", "--challenge", "c", "--out", "{out}"],
     "nested too deeply"),
    ("net.toml", DEEP_TOML, ["testnet", "up", "--dir", "{dir}", "--config", "{file}"], "nested too deeply"),
    ("config.toml", DEEP_TOML, ["node", "run", "--data", "{dir}"], "nested too deeply"),
    ("testnet.json", DEEP_JSON, ["testnet", "status", "--dir", "{dir}"], "maximum recursion depth"),
])
def test_pathological_json_and_toml_get_a_one_line_error(tmp_path: Path, name: str, text: str, args: list[str],
                                                        says: str) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / name).write_text(text)
    key = new_key(tmp_path / "k.key")
    fields = {"file": d / name, "dir": d, "key": tmp_path / "k.key", "did": key.did, "out": tmp_path / "out.json"}
    r = run(*(a.format(**fields) for a in args), env={"LER_NODE": UNREACHABLE})
    assert r.exit_code in (1, 2) and says in one_line_error(r), r.output


def test_listed_options_keep_each_item_once_in_order() -> None:
    from node.cli import split_list
    assert split_list(["degree,degree", " field ,degree", "", ",awarded,"]) == ["degree", "field", "awarded"]


def test_commands_printed_for_the_user_to_run_work_as_pasted_with_spaces_in_paths(tmp_path: Path) -> None:
    genesis, auth = make_genesis_files(tmp_path)
    data = tmp_path / "my nodes" / "node 1"
    r = run("node", "init", "--genesis", str(genesis), "--key", str(auth), "--data", str(data))
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("start it with: "))
    assert shlex.split(line.removeprefix("start it with: ")) == ["ler", "node", "run", "--data", str(data)]


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


def _path_params() -> Iterator[tuple[tuple[str, ...], str]]:
    for path in ALL_COMMANDS:
        cmd = _command(path)
        if isinstance(cmd, click.Group):
            continue
        for p in cmd.params:
            if p.metavar in ("FILE", "DIR", "BUNDLE") or isinstance(p.type, click.Path):
                yield path, p.name or ""


def _dummy(p: click.Parameter) -> str:
    if p.metavar in ("FILE", "DIR", "BUNDLE") or isinstance(p.type, click.Path):
        return "no-such-file"
    if isinstance(p.type, click.Choice):
        return str(p.type.choices[0])
    if isinstance(p.type, click.types.IntParamType | click.types.FloatParamType):
        return "1"
    return "x"


@pytest.mark.parametrize("path, name", list(_path_params()), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_an_empty_path_is_refused_by_every_command(path: tuple[str, ...], name: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out ""` named the current folder, or failed with a message about a file with no name. Run in a
    folder of its own: should the check ever fail, what the command made lands there and is stopped."""
    monkeypatch.chdir(tmp_path)
    args: list[str] = []
    for p in _command(path).params:
        if p.name != name and not p.required:
            continue
        value = "" if p.name == name else _dummy(p)
        if isinstance(p, click.Argument):
            args.append(value)
        elif isinstance(p, click.Option):
            args += [p.opts[0], value]
    try:
        r = run(*path, *args)
    finally:
        for made in tmp_path.rglob("testnet.json"):  # `testnet up` ran after all: stop its nodes
            run("testnet", "down", "--dir", str(made.parent))
    assert r.exit_code == 2, (args, r.output)
    assert "the path is empty" in one_line_error(r), (args, r.output)


def _dir_params() -> Iterator[tuple[tuple[str, ...], str]]:
    for path, name in _path_params():
        if next(p for p in _command(path).params if p.name == name).metavar == "DIR":
            yield path, name


@pytest.mark.parametrize("under", [False, True], ids=["a file", "a path under a file"])
@pytest.mark.parametrize("path, name", list(_dir_params()), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_file_where_a_folder_is_wanted_is_refused_by_every_command(path: tuple[str, ...], name: str, under: bool,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--data notes.txt` ended in "unexpected failure (NotADirectoryError)" or "[Errno 17] File exists"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a folder\n")
    args: list[str] = []
    for p in _command(path).params:
        if p.name != name and not p.required:
            continue
        value = ("notes.txt/sub" if under else "notes.txt") if p.name == name else _dummy(p)
        if isinstance(p, click.Argument):
            args.append(value)
        elif isinstance(p, click.Option):
            args += [p.opts[0], value]
    r = run(*path, *args)
    assert r.exit_code == 2, (args, r.output)
    assert "notes.txt is a file, not a folder" in one_line_error(r), (args, r.output)
    assert (tmp_path / "notes.txt").read_text() == "not a folder\n"


# --- Ctrl-C ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("after_s", [0.05, 0.15, 0.3, 0.6])
def test_ctrl_c_at_any_moment_ends_the_command_without_a_traceback(after_s: float) -> None:
    """The command line takes a few tenths of a second to load: Ctrl-C then, as later, says it was aborted."""
    import signal
    import time

    p = subprocess.Popen([str(LER), "keys", "new", "--out", "/dev/null/k", "--encrypt"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after_s)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert p.returncode in (1, 2, -signal.SIGINT), (p.returncode, err)


#: Runs the console script's entry point with Ctrl-C sent to itself on entering the function named by
#: argv[1] for the argv[2]-th time, while the command line loads: any moment, made repeatable.
_CTRL_C_INSIDE = """
import os, signal, sys
target, nth, seen = sys.argv[1], int(sys.argv[2]), 0
def profile(frame, event, _arg):
    global seen
    if event == "call" and target in ("*", frame.f_code.co_name):
        seen += 1
        if seen == nth:
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGINT)
sys.argv = ["ler", "keys", "new", "--out", "/dev/null/k", "--encrypt"]
sys.setprofile(profile)
from node.launch import main
main()
"""


# Loading makes about 50,000 calls on Python 3.11: the counts below stay well inside it.
@pytest.mark.parametrize(("function", "nth"), [("__set_name__", 1), ("__set_name__", 40), ("*", 2000),
                                                ("*", 12000), ("*", 25000), ("_find_and_load", 30)])
def test_ctrl_c_inside_any_step_of_loading_says_aborted(function: str, nth: int) -> None:
    """Ctrl-C landing inside a dataclass field's __set_name__ surfaced as a RuntimeError (Python wraps
    what that hook raises), not a KeyboardInterrupt, and printed a traceback; every moment is covered."""
    import signal

    p = subprocess.run([sys.executable, "-c", _CTRL_C_INSIDE, function, str(nth)], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "Traceback" not in p.stderr and "KeyboardInterrupt" not in p.stderr, p.stderr
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == "error: aborted", (p.returncode, p.stderr)


def test_a_passphrase_asked_for_with_no_terminal_is_read_from_stdin_without_a_python_warning(tmp_path: Path) -> None:
    """Run from a pipe or a service (no terminal): the passphrase comes from stdin, and stderr holds the
    prompts and their one-line note, not Python's GetPassWarning with a file and line."""
    env = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    made = subprocess.run([str(LER), "keys", "new", "--out", str(tmp_path / "k.key"), "--encrypt"],
                          input="pw\npw\n", capture_output=True, text=True, env=env, start_new_session=True)
    assert made.returncode == 0, made.stderr
    assert "Warning" not in made.stderr.replace("Warning: Password input may be echoed.", ""), made.stderr
    assert keys.is_encrypted(tmp_path / "k.key")
    none = subprocess.run([str(LER), "keys", "new", "--out", str(tmp_path / "k2.key"), "--encrypt"],
                          input="", capture_output=True, text=True, env=env, start_new_session=True)
    assert none.returncode == 2 and "no passphrase given" in none.stderr, none.stderr
    assert "GetPassWarning" not in none.stderr and not (tmp_path / "k2.key").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses a Linux pseudo-terminal")
@pytest.mark.parametrize("keystroke", [b"\x03", b"\x04"])  # Ctrl-C, Ctrl-D
def test_a_passphrase_prompt_stopped_at_the_terminal_says_aborted(tmp_path: Path, keystroke: bytes) -> None:
    """At a terminal, Ctrl-C or Ctrl-D at the passphrase prompt is the person stopping the command:
    "aborted" (exit 1), as anywhere else, not "no passphrase given" (which is for a pipe that ran dry)."""
    import pty
    import select
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    pid, fd = pty.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(str(LER), [str(LER), "keys", "new", "--out", str(tmp_path / "k.key"), "--encrypt"], env)
        finally:
            os._exit(127)
    out = bytearray()
    deadline = time.monotonic() + 60
    try:
        while b"Passphrase" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                out += os.read(fd, 4096)
        assert b"Passphrase" in out, out
        os.write(fd, keystroke)
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the command ended and closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 1, text
    assert "error: aborted" in text and "no passphrase given" not in text, text
    assert "Traceback" not in text and not (tmp_path / "k.key").exists()


def test_counts_read_as_words_do() -> None:
    from node.cli import plural

    assert [plural(n, "observer") for n in (0, 1, 2)] == ["0 observers", "1 observer", "2 observers"]
    assert plural(1, "authority", "authorities") == "1 authority" and plural(3, "authority", "authorities") == \
        "3 authorities"
