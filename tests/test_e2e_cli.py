"""The `ler` command line against real node processes, as a user runs it.

The walk-through: keys, genesis, a node started with `ler node run`, an accredited university issuing a
degree, a holder proving part of it, an employer verifying it offline (and catching every tampered byte),
a revocation, an unaccredited issuer and a self-asserted record. Each command is the `ler` console
script in a subprocess with the test folder as its working directory.

The rest checks what each command reports for what a real node answers (anchored, rejected, votes
so far, executed, pending at timeout, the node's own reasons), and the HTTP client's errors.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from node_proc import LER, Chain, NodeProc, free_port, full_disk, init_node, make_chain, wait_until

from ler import keys
from ler.bundle import verify_bundle
from ler.keys import KeyPair, write_key_file
from ler.record import RecordDocument
from ler.tx import Action
from node.cli import parse_time_ms
from node.client import ClientError, NodeClient

pytestmark = pytest.mark.slow

UNREACHABLE = "http://127.0.0.1:9"


def ler(*args: str, cwd: Path, env: dict[str, str] | None = None, check: int | None = 0
        ) -> subprocess.CompletedProcess[str]:
    """Run the `ler` console script; assert its exit status (unless check is None)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    r = subprocess.run([str(LER), *args], cwd=cwd, env=base | (env or {}), capture_output=True, text=True,
                       timeout=120)
    if check is not None:
        assert r.returncode == check, f"ler {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# --- the walk-through ------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
README_PORT = "127.0.0.1:8701"


def readme_walkthrough() -> list[tuple[str, int]]:
    """The README's walk-through block as (command line, expected exit status), in order.

    Continuation lines are joined; a trailing "# exit N" comment gives the expected status (default 0).
    """
    text = README.read_text()
    assert "Then paste, line by line:" in text, "the README has no walk-through block"
    block = text.split("Then paste, line by line:", 1)[1].split("```", 2)[1]
    commands: list[tuple[str, int]] = []
    pending = ""
    for raw in block.splitlines():
        comment = re.search(r"\s#\s*(.*)$", raw)
        line = raw[:comment.start()] if comment else raw
        line = line.rstrip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if not line:
            continue
        status = re.match(r"exit (\d)", comment.group(1)) if comment else None
        commands.append((line, int(status.group(1)) if status else 0))
    return commands


class Shell:
    """Runs the README's lines the way bash would, one at a time, with the test folder as cwd."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd, self.port = cwd, port
        self.vars: dict[str, str] = {}
        self.node: NodeProc | None = None
        self.results: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def expand(self, line: str) -> str:
        line = line.replace(README_PORT, f"127.0.0.1:{self.port}")
        return re.sub(r"\$(\w+)", lambda m: self.vars[m.group(1)], line)

    def run(self, line: str, status: int) -> None:
        line = self.expand(line)
        if m := re.fullmatch(r"(\w+)=\$\((.*)\)", line):  # VAR=$(command)
            self.vars[m.group(1)] = self.ler(m.group(2), 0).stdout.strip()
        elif m := re.fullmatch(r"echo '(.*)' > (\S+)", line):
            (self.cwd / m.group(2)).write_text(m.group(1) + "\n")
        elif m := re.fullmatch(r"ler node run --data (\S+) 2> (\S+) &", line):
            self.node = NodeProc(Path(m.group(1)), [str(LER), "node", "run", "--data", m.group(1)],
                                 cwd=self.cwd, log_path=self.cwd / m.group(2))
            self.node.start()
        elif line == "kill %1":
            assert self.node is not None
            assert self.node.terminate() == 0, self.node.log()
        else:
            assert line.startswith("ler "), f"the walk-through has a line this test cannot run: {line}"
            self.results.append((line, self.ler(line, status)))

    def ler(self, line: str, status: int) -> subprocess.CompletedProcess[str]:
        args = shlex.split(line)
        assert args[0] == "ler", line
        return ler(*args[1:], cwd=self.cwd, check=status)

    def output(self, prefix: str) -> subprocess.CompletedProcess[str]:
        """The last result of a command line starting with `prefix`."""
        return [r for line, r in self.results if line.startswith(prefix)][-1]


def test_readme_walkthrough(tmp_path: Path) -> None:
    commands = readme_walkthrough()
    assert [c for c, _ in commands if c.startswith("ler ")][:3] == [
        "ler keys new --out authority.key",
        "ler genesis new --chain-id demo --authority authority.key --out genesis.json",
        "ler node init --genesis genesis.json --key authority.key --data node1 --listen 127.0.0.1:8701"]
    assert commands[-1][0] == "kill %1"
    sh = Shell(tmp_path, free_port())
    try:
        for line, status in commands[:-1]:
            sh.run(line, status)
        node_url = f"http://127.0.0.1:{sh.port}"
        university, holder = sh.vars["UNIVERSITY"], sh.vars["HOLDER"]
        assert university.startswith("did:key:z6Mk") and holder.startswith("did:key:z6Mk") and university != holder
        r = sh.output("ler accredit")
        assert f"executed: Example University ({university}) is active for degree" in r.stdout
        r = sh.output("ler issue")
        assert "standing: accredited" in r.stdout and "Example University" in r.stdout

        r = sh.output("ler verify bundle.json")  # exit 0 (checked as the README says)
        assert r.stdout.startswith("VALID: ")
        assert "degree: BSc" in r.stdout and "field: Logistics" in r.stdout
        assert "awarded: 2009" not in r.stdout and "hidden:    awarded" in r.stdout
        # the hidden value is nowhere in the file (hashes and times are digits too: look for it as a value)
        assert '"2009"' not in (tmp_path / "bundle.json").read_text()
        r = ler("verify", "--json", "bundle.json", "--genesis", "genesis.json", cwd=tmp_path)
        obj = json.loads(r.stdout)
        assert obj["verdict"] == "valid" and obj["valid"] is True and obj["checks"]
        assert all(c["pass"] for c in obj["checks"])
        assert_every_flip_is_caught(tmp_path, tmp_path / "bundle.json")

        revoked_at = int(sh.output("ler revoke").stdout.split(" at block ")[1].split(":")[0])
        r = sh.output("ler verify bundle2.json")  # exit 1
        assert r.stdout.startswith(f"REVOKED: revoked by its issuer at block {revoked_at}: issued in error")
        r = ler("verify", "bundle2.json", "--genesis", "genesis.json", "--json", cwd=tmp_path, check=1)
        obj = json.loads(r.stdout)
        assert obj["verdict"] == "revoked"
        assert obj["records"][0]["revoked"] == {"height": revoked_at, "reason": "issued in error"}

        more_after_the_readme(tmp_path, node_url, holder)
    finally:
        if sh.node is not None and sh.node.running():
            sh.run(*commands[-1])  # kill %1: SIGTERM, and it must exit 0
    assert sh.node is not None and not sh.node.running()
    assert "event=node_stopped" in (tmp_path / "node1.log").read_text()


def more_after_the_readme(tmp_path: Path, node_url: str, holder: str) -> None:
    """An unaccredited signer and a self-asserted record, in the same folder, on the same node."""
    run = partial(ler, cwd=tmp_path)
    node = ["--node", node_url]
    # A signer nobody accredited can anchor a record, but it never verifies as valid.
    run("keys", "new", "--out", "stranger.key")
    r = run("issue", *node, "--key", "stranger.key", "--holder", holder, "--type", "degree",
            "--claims", "claims.json", "--out", "stranger-record.json")
    assert "standing: unaccredited" in r.stdout and "not accredited" in r.stderr
    run("prove", *node, "--record", "stranger-record.json", "--reveal", "degree", "--out", "stranger-bundle.json")
    r = run("verify", "stranger-bundle.json", "--genesis", "genesis.json", check=1)
    assert r.stdout.startswith("UNACCREDITED: ")
    r = run("verify", "stranger-bundle.json", "--genesis", "genesis.json", "--json", check=1)
    assert json.loads(r.stdout)["verdict"] == "unaccredited"

    # The holder records something about themselves: shown as self-asserted, never as valid.
    r = run("issue", *node, "--key", "holder.key", "--holder", holder, "--type", "degree",
            "--claims", "claims.json", "--out", "self-record.json")
    assert "standing: self-asserted" in r.stdout and "the holder themselves" in r.stdout
    run("prove", *node, "--record", "self-record.json", "--reveal", "degree", "--out", "self-bundle.json")
    r = run("verify", "self-bundle.json", "--genesis", "genesis.json", check=1)
    assert r.stdout.startswith("SELF-ASSERTED: ")
    r = run("verify", "self-bundle.json", "--genesis", "genesis.json", "--json", check=1)
    assert json.loads(r.stdout)["verdict"] == "self-asserted"


def assert_every_flip_is_caught(cwd: Path, bundle: Path, samples: int = 30) -> None:
    """Flip one bit at each of `samples` positions spread over the file: `ler verify` never says valid."""
    data = bundle.read_bytes()
    positions = sorted({round(i * (len(data) - 1) / (samples - 1)) for i in range(samples)})
    procs = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    for batch_start in range(0, len(positions), 8):  # a few at a time: the machine has few cores
        batch = []
        for pos in positions[batch_start:batch_start + 8]:
            flipped = bytearray(data)
            flipped[pos] ^= 0x01
            path = cwd / f"tampered-{pos}.json"
            path.write_bytes(bytes(flipped))
            batch.append((pos, subprocess.Popen([str(LER), "verify", path.name, "--genesis", "genesis.json"],
                                                cwd=cwd, env=base, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True)))
        for pos, p in batch:
            out, err = p.communicate(timeout=60)
            procs.append((pos, p.returncode, out, err))
    for pos, code, out, err in procs:
        assert code == 1, f"flipping byte {pos} ({data[pos:pos + 1]!r}) still verifies (exit {code}):\n{out}{err}"
        headline = out.splitlines()[0] if out else ""
        assert headline.split(":")[0] in ("TAMPERED", "WRONG NETWORK", "REVOKED", "EXPIRED", "UNACCREDITED",
                                          "SELF-ASSERTED"), (pos, out, err)
        assert "Traceback" not in err


# --- commands against a real node ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Chain, NodeProc]]:
    chain = make_chain(tmp_path_factory.mktemp("cli"), chain_id="cli-test")
    node = NodeProc(init_node(chain, chain.root / "node")).start()
    yield chain, node
    assert node.terminate() == 0, node.log()


def test_issue_writes_the_anchored_record(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    holder = KeyPair.generate().did
    (tmp_path / "claims.json").write_text('{"degree": "BSc", "awarded": 2009}')
    (tmp_path / "portfolio.zip").write_bytes(b"PK\x03\x04")
    r = ler("issue", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--holder", holder,
            "--type", "degree.bachelor", "--claims", "claims.json", "--out", "record.json",
            "--evidence", "portfolio=portfolio.zip:application/zip", "--expires", "2099-12-31", "--json",
            cwd=tmp_path)
    result = json.loads(r.stdout)
    doc = RecordDocument.load(tmp_path / "record.json")
    assert doc.anchor_tx is not None
    st = node.tx_status(doc.anchor_tx)
    assert st is not None and st["status"] == "committed"
    body = st["tx"]["body"]
    assert st["tx"]["type"] == "record.anchor" and st["tx"]["signer"] == chain.issuer.did
    assert body["record"] == doc.record_id.hex() and body["commitment"] == doc.commitment.hex()
    assert body["holder"] == holder and body["issuer"] == chain.issuer.did
    assert doc.expires == body["expires"] == parse_time_ms("2099-12-31", "t")
    assert doc.claim("portfolio").value["media_type"] == "application/zip"
    assert result == {"record_id": doc.record_id.hex(), "tx": doc.anchor_tx.hex(), "height": st["height"],
                      "standing": "accredited", "issuer": chain.issuer.did, "holder": holder,
                      "type": "degree.bachelor", "out": "record.json"}
    rec = node.get_json(f"/v1/records/{doc.record_id.hex()}")
    assert rec["standing"] == "accredited" and rec["expires"] == doc.expires


def test_suspended_issuer_is_refused_and_nothing_is_written(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    uni = KeyPair.generate()
    write_key_file(tmp_path / "uni.key", uni)
    auth = str(chain.authority_key_path)
    r = ler("accredit", "--node", node.url, "--key", auth, "--issuer", "uni.key", "--name", "Uni",
            "--scope", "degree", cwd=tmp_path)
    assert f"executed: Uni ({uni.did}) is active for degree" in r.stdout
    r = ler("suspend", "--node", node.url, "--key", auth, "--issuer", uni.did, cwd=tmp_path)
    assert f"executed: Uni ({uni.did}) is suspended for degree" in r.stdout
    assert node.get_json(f"/v1/issuers/{uni.did}")["status"] == "suspended"

    (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
    r = ler("issue", "--node", node.url, "--key", "uni.key", "--holder", KeyPair.generate().did,
            "--type", "degree", "--claims", "claims.json", "--out", "record.json", cwd=tmp_path, check=1)
    assert one_line_error(r) == (f"error: transaction rejected: anchor.standing: {uni.did}'s accreditation "
                                 "is suspended")
    assert not (tmp_path / "record.json").exists()


def test_issue_on_a_full_disk_sends_nothing_and_leaves_no_file(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    """The holder's file cannot be written: nothing goes to the node, and no cut-short file is left
    (which a second try would refuse to overwrite)."""
    chain, node = net
    (tmp_path / "claims.json").write_text('{"degree": "BSc", "field": "Logistics", "awarded": "2009"}')
    before = node.get_json("/v1/status")
    r = subprocess.run([str(LER), "issue", "--node", node.url, "--key", str(chain.root / "issuer.key"),
                        "--holder", KeyPair.generate().did, "--type", "degree", "--claims", "claims.json",
                        "--out", "record.json"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       preexec_fn=full_disk(256))
    assert r.returncode == 1, r.stderr
    assert "record.json could not be written (File too large); nothing was sent to the node" in \
        one_line_error(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claims.json"]
    after = node.get_json("/v1/status")
    assert after["mempool"] == before["mempool"] and after["height"] == before["height"]


def test_accredit_reports_votes_so_far(tmp_path: Path) -> None:
    """Two authorities (the second voted in at block 1): one vote of two leaves the proposal open.

    Its own node: from block 3 the two authorities are the validators, and one node alone stops there.
    """
    chain = make_chain(tmp_path / "chain", chain_id="vote-test")
    node = NodeProc(init_node(chain, tmp_path / "node")).start()
    try:
        second = KeyPair.generate()
        write_key_file(tmp_path / "second.key", second)
        auth = str(chain.authority_key_path)
        r = ler("authority", "add", "--node", node.url, "--key", auth, "--did", "second.key",
                "--name", "Second Body", cwd=tmp_path)
        assert "committed at block 1" in r.stdout
        assert f"executed: {second.did} is now an authority (2 authorities)" in r.stdout

        issuer = KeyPair.generate().did
        r = ler("accredit", "--node", node.url, "--key", auth, "--issuer", issuer, "--name", "Uni",
                "--scope", "degree,course", "--scope", "degree", "--until", "2030-01-01", cwd=tmp_path)
        assert "committed at block 2" in r.stdout
        assert ("vote recorded: 1 of 2 authorities have voted for it; the action executes when more than 2/3 "
                "of the 2 authorities have voted (2 votes)") in r.stdout
        [proposal] = node.get_json("/v1/authorities")["proposals"]
        assert Action.from_json(proposal["action"]) == Action(
            kind="accredit", subject=issuer, name="Uni", scopes=("course", "degree"),
            until=parse_time_ms("2030-01-01", "t"))
        assert proposal["votes"] == [chain.authority.did]
    finally:
        assert node.terminate() == 0, node.log()


def test_the_nodes_reason_is_shown(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    # A record file for a record this chain never anchored: the node says so, the CLI passes it on.
    (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
    doc = RecordDocument(chain_id=chain.chain_id, record_id=os.urandom(16), issuer=chain.issuer.did,
                         holder=KeyPair.generate().did, rtype="degree", expires=None,
                         claims=RecordDocument.load(_any_record(tmp_path, chain, node)).claims)
    doc.save(tmp_path / "ghost.json")
    r = ler("prove", "--node", node.url, "--record", "ghost.json", "--reveal", "degree", "--out", "b.json",
            cwd=tmp_path, check=1)
    api = node.post_json(f"/v1/records/{doc.record_id.hex()}/bundle",
                         {"disclosure": doc.disclose(["degree"]).to_json()})
    assert api.status == 404
    assert one_line_error(r) == f"error: making the bundle: {api.json()['error']}"
    assert not (tmp_path / "b.json").exists()

    r = ler("revoke", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--record-id",
            doc.record_id.hex(), "--reason", "x", cwd=tmp_path, check=1)
    assert one_line_error(r) == (f"error: transaction rejected: revoke.unknown: no record {doc.record_id.hex()} "
                                 f"on the ledger ({node.url} serves the network {chain.chain_id!r}; is the record "
                                 "of another?)")
    r = ler("endorse", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--record-id",
            doc.record_id.hex(), cwd=tmp_path, check=1)
    assert f"({node.url} serves the network {chain.chain_id!r}; is the record of another?)" in one_line_error(r)


def _any_record(tmp_path: Path, chain: Chain, node: NodeProc) -> Path:
    out = tmp_path / "real.json"
    ler("issue", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--holder",
        KeyPair.generate().did, "--type", "degree", "--claims", "claims.json", "--out", out.name, cwd=tmp_path)
    return out


def test_status_human_and_json(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    chain, node = net
    height = node.height()
    r = ler("status", "--node", node.url, cwd=tmp_path)
    assert f"chain:        cli-test (genesis {chain.genesis.hash.hex()})" in r.stdout
    assert f"height:       {height}" in r.stdout
    assert f"({chain.authority.did}, authority, version " in r.stdout
    assert "transaction(s)" in r.stdout
    r = ler("status", "--json", cwd=tmp_path, env={"LER_NODE": node.url})
    st = json.loads(r.stdout)
    assert st["chain_id"] == "cli-test" and st["height"] == height


def test_a_node_url_given_with_the_api_prefix_is_the_nodes_url(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    """`--node http://HOST:PORT/v1` (copied from a /v1/status link) or with a trailing slash reaches the
    node as its base URL does, for every command that takes --node (and a peer given to `node init`); a
    URL with another path that the node does not serve is named in a clear error, with what to give."""
    chain, node = net
    height = node.height()
    for given in (node.url + "/v1", node.url + "/v1/", node.url + "/"):
        r = ler("status", "--node", given, cwd=tmp_path)
        assert f"node:         {node.url} (" in r.stdout and f"height:       {height}" in r.stdout, r.stdout
        assert NodeClient(given).url == node.url
    (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
    ler("issue", "--node", node.url + "/v1/", "--key", str(chain.root / "issuer.key"), "--holder",
        KeyPair.generate().did, "--type", "degree", "--claims", "claims.json", "--out", "r.json", cwd=tmp_path)
    ler("prove", "--node", node.url + "/v1", "--record", "r.json", "--reveal", "degree", "--out", "b.json",
        cwd=tmp_path)
    ler("verify", "b.json", "--genesis", str(chain.genesis_path), "--refresh", node.url + "/v1", cwd=tmp_path)
    ghost = ler("revoke", "--node", node.url + "/v1", "--key", str(chain.root / "issuer.key"), "--record-id",
                "00" * 16, "--reason", "x", cwd=tmp_path, check=1)
    assert f"no record {'00' * 16} on the ledger" in ghost.stderr  # the node's own reason, unchanged
    wrong = ler("status", "--node", node.url + "/api", cwd=tmp_path, check=1)
    line = one_line_error(wrong)
    assert f"{node.url}/api/v1/status is not found (HTTP 404): is {node.url}/api the node's base URL? " \
           "Give it as http://HOST:PORT, with no path" in line, line
    init = ler("node", "init", "--genesis", str(chain.genesis_path), "--key", str(chain.authority_key_path),
               "--data", str(tmp_path / "peered"), "--listen", f"127.0.0.1:{free_port()}",
               "--peer", node.url + "/v1/", cwd=tmp_path)
    assert init.returncode == 0
    assert f'"{node.url}"' in (tmp_path / "peered" / "config.toml").read_text()


def test_client_errors(net: tuple[Chain, NodeProc]) -> None:
    _, node = net
    client = NodeClient(node.url, timeout=5)
    with pytest.raises(ClientError) as exc:
        client.record("00" * 16)
    assert exc.value.status == 404 and exc.value.reason == f"no record {'00' * 16} on the ledger"
    with pytest.raises(ClientError) as exc:
        client.record("xyz")
    assert exc.value.status == 400 and "record id" in exc.value.reason
    assert client.issuer_or_none(KeyPair.generate().did) is None
    assert client.status()["chain_id"] == "cli-test"
    with pytest.raises(ClientError) as exc:
        NodeClient(UNREACHABLE).status()
    assert exc.value.unreachable and "cannot reach node at http://127.0.0.1:9" in exc.value.reason
    with pytest.raises(ClientError):
        NodeClient("127.0.0.1:8701")


def test_issue_not_committed_in_time_keeps_the_record_file(tmp_path: Path) -> None:
    """A node that waits 2.5 s before each block: `--timeout 0.3` ends with the tx still pending."""
    chain = make_chain(tmp_path / "chain", chain_id="slow-test")
    node = NodeProc(init_node(chain, tmp_path / "node", blocks={"batch_ms": 2500})).start()
    try:
        (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
        r = ler("issue", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--holder",
                KeyPair.generate().did, "--type", "degree", "--claims", "claims.json", "--out", "record.json",
                "--timeout", "0.3", cwd=tmp_path, check=1)
        assert "not committed within 0.3 s" in one_line_error(r)
        doc = RecordDocument.load(tmp_path / "record.json")  # the salts are not lost if it commits later
        assert doc.anchor_tx is not None
        node.wait_committed([doc.anchor_tx])
        rec = node.get_json(f"/v1/records/{doc.record_id.hex()}")
        assert rec["commitment"] == doc.commitment.hex()
    finally:
        assert node.terminate() == 0, node.log()


@pytest.mark.parametrize(("node_wait_s", "says"), [
    (30, "the node may have taken the record"),  # killed while the submission itself waits
    (1, "the node had taken the record"),        # killed after it answered "pending", while ler asks again
])
def test_issue_whose_answer_is_lost_keeps_the_record_file(tmp_path: Path, node_wait_s: int, says: str) -> None:
    """The node takes the anchor (durably) and is killed before it answers: the issuer hears nothing
    certain, so the holder's file must already be on disk, since the record commits once the node is
    back. A refused anchor, by contrast, leaves no file (see the suspended issuer above)."""
    chain = make_chain(tmp_path / "chain", chain_id="lost-answer")
    node = NodeProc(init_node(chain, tmp_path / "node", blocks={"batch_ms": 60_000},
                              limits={"wait_timeout_s": float(node_wait_s)})).start()
    try:
        (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
        cli = subprocess.Popen([str(LER), "issue", "--node", node.url, "--key", str(chain.root / "issuer.key"),
                                "--holder", KeyPair.generate().did, "--type", "degree", "--claims", "claims.json",
                                "--out", "record.json", "--timeout", "30"], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: node.get_json("/v1/status")["mempool"]["txs"] == 1 or None, 30,
                   "the node to take the anchor")
        if node_wait_s < 30:  # well past the node's own 1 s wait: ler has its answer and is asking again
            time.sleep(node_wait_s + 2)
        node.kill()
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 1 and "Traceback" not in err, err
        assert says in err and "record.json is kept" in err, err
        doc = RecordDocument.load(tmp_path / "record.json")
        assert doc.anchor_tx is not None

        cfg = tmp_path / "node" / "config.toml"
        cfg.write_text(cfg.read_text().replace("batch_ms = 60000", "batch_ms = 20"))
        node.start()  # it reloads what it acknowledged, and commits it (a single authority's block)
        node.wait_committed([doc.anchor_tx])
        assert node.get_json(f"/v1/records/{doc.record_id.hex()}")["commitment"] == doc.commitment.hex()
    finally:
        node.close()


def test_a_genesis_time_in_the_future_is_taken_with_a_note_and_the_node_warns(tmp_path: Path) -> None:
    """A planned launch is a choice, a typo in the year a chain that makes no block for decades: either
    way the operator is told, by `ler genesis new` and by the node when it starts."""
    ler("keys", "new", "--out", "auth.key", cwd=tmp_path)
    r = ler("genesis", "new", "--chain-id", "later", "--authority", "auth.key", "--out", "g.json", "--time",
            "2100-01-01", cwd=tmp_path)
    assert "note: the genesis time is" in r.stderr and "days from now" in r.stderr, r.stderr
    ler("node", "init", "--genesis", "g.json", "--key", "auth.key", "--data", "node", "--listen",
        f"127.0.0.1:{free_port()}", cwd=tmp_path)
    node = NodeProc(tmp_path / "node").start()
    try:
        assert "level=WARNING logger=ler.node event=genesis_in_future" in node.log()
    finally:
        assert node.terminate() == 0, node.log()
    r = ler("genesis", "new", "--chain-id", "now", "--authority", "auth.key", "--out", "n.json", cwd=tmp_path)
    assert "note:" not in r.stderr


def test_node_run_with_an_encrypted_key(tmp_path: Path) -> None:
    """The passphrase from $LER_KEY_PASSPHRASE unlocks the node key; the node signs as that key."""
    chain = make_chain(tmp_path / "chain", chain_id="enc-test")
    write_key_file(tmp_path / "enc.key", chain.authority, "pw")
    port = free_port()
    ler("node", "init", "--genesis", str(chain.genesis_path), "--key", "enc.key", "--data", "node",
        "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert keys.is_encrypted(tmp_path / "node" / "node.key")
    node = NodeProc(tmp_path / "node", [str(LER), "node", "run", "--data", "node"], cwd=tmp_path,
                    env={"LER_KEY_PASSPHRASE": "pw"})
    node.start()
    try:
        assert node.get_json("/v1/status")["node"] == chain.authority.did
        doc_tx = _anchor_via_api(chain, node)
        block = node.get_json(f"/v1/blocks/{doc_tx['height']}")
        assert block["header"]["proposer"] == chain.authority.public_key.hex()
    finally:
        assert node.terminate() == 0, node.log()
    r = ler("node", "run", "--data", "node", cwd=tmp_path, env={"LER_KEY_PASSPHRASE": "wrong"}, check=2)
    assert "wrong passphrase" in one_line_error(r)


def _anchor_via_api(chain: Chain, node: NodeProc) -> dict[str, Any]:
    from ler.record import make_claims
    from ler.tx import RecordAnchor, sign_tx

    holder = KeyPair.generate().did
    doc = RecordDocument(chain_id=chain.chain_id, record_id=os.urandom(16), issuer=chain.issuer.did, holder=holder,
                         rtype="degree", expires=None, claims=make_claims({"degree": "BSc"}))
    tx = sign_tx(chain.issuer, chain.chain_id, RecordAnchor(record=doc.record_id, issuer=chain.issuer.did,
                                                            holder=holder, rtype="degree",
                                                            commitment=doc.commitment, expires=None))
    [res] = node.commit([tx])
    bundle = node.post_json(f"/v1/records/{doc.record_id.hex()}/bundle",
                            {"disclosure": doc.disclose(["degree"]).to_json()})
    assert verify_bundle(bundle.body, chain.genesis).verdict == "valid"
    return res


def test_stack_records_from_different_issuers(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    """A holder stacks an accredited degree and a self-asserted skill into one bundle; each verifies on
    its own, the bundle's verdict is the weaker one, and every hidden value stays out of the file."""
    chain, node = net
    run = partial(ler, cwd=tmp_path)
    nodeopt = ["--node", node.url]
    run("keys", "new", "--out", "holder.key")
    holder = run("keys", "show", "--key", "holder.key").stdout.strip()
    (tmp_path / "degree.json").write_text('{"degree": "BSc", "field": "Logistics", "awarded": "2009"}')
    (tmp_path / "skill.json").write_text('{"skill": "forklift operation", "years": 15}')
    run("issue", *nodeopt, "--key", str(chain.root / "issuer.key"), "--holder", holder, "--type", "degree",
        "--claims", "degree.json", "--out", "degree-record.json")
    run("issue", *nodeopt, "--key", "holder.key", "--holder", holder, "--type", "skill",
        "--claims", "skill.json", "--out", "skill-record.json")
    r = run("stack", *nodeopt, "degree-record.json=degree,field", "skill-record.json=skill", "--out", "clr.json")
    assert "2 records" in r.stdout
    raw = (tmp_path / "clr.json").read_text()
    assert '"2009"' not in raw and "forklift operation" in raw
    r = run("verify", "clr.json", "--genesis", str(chain.genesis_path), "--json", check=1)
    obj = json.loads(r.stdout)
    assert obj["verdict"] == "self-asserted"
    assert [rec["verdict"] for rec in obj["records"]] == ["valid", "self-asserted"]
    assert obj["records"][0]["hidden_claims"] == ["awarded"] and obj["records"][1]["hidden_claims"] == ["years"]
    # bad usage: an item without "=", an unknown claim, the same record twice
    assert run("stack", *nodeopt, "degree-record.json", "--out", "x.json", check=2).returncode == 2
    assert run("stack", *nodeopt, "degree-record.json=grade", "--out", "x.json", check=2).returncode == 2
    assert run("stack", *nodeopt, "degree-record.json=degree", "degree-record.json=field", "--out", "x.json",
               check=2).returncode == 2


def test_a_record_file_that_disagrees_with_the_ledger_gets_no_bundle(tmp_path: Path,
                                                                       net: tuple[Chain, NodeProc]) -> None:
    """The bundle is built from the ledger alone, so an altered copy of the anchor in the holder's file
    would have gone unnoticed: each field the file shares with the ledger is compared, and a field that
    is not even of its kind is refused before the node is asked."""
    chain, node = net
    (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
    good = json.loads(_any_record(tmp_path, chain, node).read_text())
    cases: list[tuple[str, Any, int, str]] = [
        ("issuer", KeyPair.generate().did, 1, "its issuer is"),
        ("holder", KeyPair.generate().did, 1, "its holder is"),
        ("type", "degree.master", 1, "its type is 'degree.master'"),
        ("expires", 4102444800000, 1, "its expires is 4102444800000"),
        ("anchor_tx", "ab" * 32, 1, "its anchor_tx is"),
        ("issuer", None, 2, "issuer: expected a did:key"),
        ("holder", "did:web:example.com", 2, "holder:"),
        ("expires", -1, 2, "expires must be a time"),
        ("anchor_tx", 0, 2, "anchor_tx"),
        ("anchor_tx", "", 2, "anchor_tx"),
    ]
    for field, value, status, says in cases:
        (tmp_path / "altered.json").write_text(json.dumps({**good, field: value}))
        for command in (["prove", "--record", "altered.json", "--reveal", "degree"],
                        ["stack", "altered.json=degree"],
                        ["export", "--record", "altered.json", "--key", str(chain.root / "issuer.key")]):
            r = ler(*command, "--node", node.url, "--out", "bundle.json", cwd=tmp_path, check=status)
            assert says in one_line_error(r), (field, value, r.stderr)
            assert not (tmp_path / "bundle.json").exists()
    (tmp_path / "same.json").write_text(json.dumps({**good, "anchor_tx": None}))  # a file made before anchoring
    ler("prove", "--record", "same.json", "--reveal", "degree", "--node", node.url, "--out", "bundle.json",
        cwd=tmp_path)


# --- what the node learns of a disclosure -------------------------------------------------------------

class Recorder:
    """A tiny HTTP proxy in front of a real node: it forwards every request unchanged and keeps each one
    (method, path, body), so a test sees exactly what a command sent the node."""

    def __init__(self, node_url: str) -> None:
        import http.server
        import threading

        from node_proc import http as forward

        seen = self.requests = []  # type: list[tuple[str, str, bytes]]

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                seen.append((self.command, self.path, body or b""))
                reply = forward(node_url, self.command, self.path, body, self.headers.get("Content-Type"),
                                timeout=60)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type or "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_the_node_never_sees_what_the_holder_reveals(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    """prove, stack and export send the node a disclosure that reveals nothing (claim names and salted
    digests); the holder's own disclosure goes into the bundle locally. The bundles verify and reveal what
    was asked, are byte for byte what the node would have built with the real disclosure, and no revealed
    value or salt is in any request the node received."""
    import base64

    from ler.bundle import ProofBundle
    from ler.vc import BUNDLE_PROPERTY

    chain, node = net
    run = partial(ler, cwd=tmp_path)
    genesis = ["--genesis", str(chain.genesis_path)]
    run("keys", "new", "--out", "holder.key")
    holder = run("keys", "show", "--key", "holder.key").stdout.strip()
    degree = {"degree": "BSc-SECRET-degree-41", "field": "Logistics-SECRET-field-42",
              "awarded": "SECRET-awarded-43", "grade": 8675309}
    (tmp_path / "degree.json").write_text(json.dumps(degree))
    (tmp_path / "skill.json").write_text('{"skill": "SECRET-forklift-44", "years": 15}')
    run("issue", "--node", node.url, "--key", str(chain.root / "issuer.key"), "--holder", holder,
        "--type", "degree", "--claims", "degree.json", "--out", "degree-record.json")
    run("issue", "--node", node.url, "--key", "holder.key", "--holder", holder, "--type", "skill",
        "--claims", "skill.json", "--out", "skill-record.json")
    docs = {name: RecordDocument.load(tmp_path / f"{name}-record.json") for name in ("degree", "skill")}

    with Recorder(node.url) as rec:
        run("prove", "--node", rec.url, "--record", "degree-record.json", "--reveal", "degree,grade",
            "--out", "prove.json", *genesis)
        run("stack", "--node", rec.url, "degree-record.json=field,awarded", "skill-record.json=skill",
            "--out", "stack.json", *genesis)
        run("export", "--node", rec.url, "--record", "degree-record.json", "--key", str(chain.root / "issuer.key"),
            "--out", "credential.json", *genesis)
    bundle_posts = [(p, json.loads(b)) for m, p, b in rec.requests if m == "POST" and "bundle" in p]
    assert [p for p, _ in bundle_posts] == [f"/v1/records/{docs['degree'].record_id.hex()}/bundle", "/v1/bundles",
                                            f"/v1/records/{docs['degree'].record_id.hex()}/bundle"]
    sent = [b["disclosure"] for _, b in bundle_posts[::2]] + [r["disclosure"] for r in bundle_posts[1][1]["records"]]
    assert all(d["revealed"] == [] for d in sent), sent
    assert [d["hidden"] for d in sent] == [docs["degree"].disclose([]).to_json()["hidden"]] * 3 + [
        docs["skill"].disclose([]).to_json()["hidden"]]
    everything = b"\n".join(b for _, _, b in rec.requests)
    revealed = [*docs["degree"].claims, docs["skill"].claim("skill")]  # every claim revealed to someone
    for c in revealed:
        assert json.dumps(c.value).encode() not in everything, c.key
    for doc in docs.values():
        for c in doc.claims:
            assert c.salt.hex().encode() not in everything
            assert base64.urlsafe_b64encode(c.salt).rstrip(b"=") not in everything
    assert b"8675309" not in everything and b"SECRET" not in everything

    # (a) each verifies and reveals exactly what was asked
    r = run("verify", "prove.json", *genesis, "--json")
    [got] = json.loads(r.stdout)["records"]
    assert got["verdict"] == "valid" and got["disclosed"] == {"degree": degree["degree"], "grade": 8675309}
    assert sorted(got["hidden_claims"]) == ["awarded", "field"]
    r = run("verify", "stack.json", *genesis, "--json", check=1)  # the skill is self-asserted
    got_d, got_s = json.loads(r.stdout)["records"]
    assert got_d["verdict"] == "valid" and got_s["verdict"] == "self-asserted"
    assert got_d["disclosed"] == {"awarded": degree["awarded"], "field": degree["field"]}
    assert got_s["disclosed"] == {"skill": "SECRET-forklift-44"}
    r = run("verify", "credential.json", *genesis)
    assert r.stdout.startswith("VALID: ") and degree["awarded"] in r.stdout and "8675309" in r.stdout

    # ... byte for byte the bundle the node builds from the holder's real disclosure (the old flow)
    def old_flow(path: str, body: dict[str, Any]) -> bytes:
        reply = node.post_json(path, body)
        assert reply.status == 200, reply
        return reply.body

    d, s = docs["degree"], docs["skill"]
    path = f"/v1/records/{d.record_id.hex()}/bundle"
    assert (tmp_path / "prove.json").read_bytes() == old_flow(
        path, {"disclosure": d.disclose(["degree", "grade"]).to_json()})
    assert (tmp_path / "stack.json").read_bytes() == old_flow("/v1/bundles", {"records": [
        {"record_id": d.record_id.hex(), "disclosure": d.disclose(["field", "awarded"]).to_json()},
        {"record_id": s.record_id.hex(), "disclosure": s.disclose(["skill"]).to_json()}]})
    carried = json.loads((tmp_path / "credential.json").read_text())[BUNDLE_PROPERTY]
    assert ProofBundle.from_json(carried).dumps() == old_flow(
        path, {"disclosure": d.disclose([c.key for c in d.claims]).to_json()})


def test_issue_with_a_rotated_in_key_needs_the_issuers_did(tmp_path: Path, net: tuple[Chain, NodeProc]) -> None:
    """After `ler rotate-key`, the new key's own did is no registered issuer: `ler issue --key new.key`
    without --issuer is refused (2) before anything is anchored, naming the issuer to pass; with it, the
    record is the accredited issuer's. A key no issuer uses still issues, unaccredited, as before."""
    chain, node = net
    run = partial(ler, cwd=tmp_path)
    nodeopt = ["--node", node.url]
    old = run("keys", "new", "--out", "old.key").stdout.strip()
    new = run("keys", "new", "--out", "new.key").stdout.strip()
    run("accredit", *nodeopt, "--key", str(chain.authority_key_path), "--issuer", old, "--name", "Rotating U",
        "--scope", "degree")
    run("rotate-key", *nodeopt, "--key", "old.key", "--new-key", "new.key")
    (tmp_path / "claims.json").write_text('{"degree": "BSc"}')
    holder = KeyPair.generate().did
    height = node.height()
    issue = ["issue", *nodeopt, "--key", "new.key", "--holder", holder, "--type", "degree", "--claims", "claims.json"]
    r = run(*issue, "--out", "record.json", check=2)
    assert one_line_error(r) == (f"error: --key new.key is the current key of the registered issuer Rotating U "
                                 f"({old}), after a key rotation: pass --issuer {old} to issue as that issuer "
                                 f"(without it the record would be anchored as from {new}, an unregistered issuer)")
    assert not (tmp_path / "record.json").exists() and node.height() == height
    r = run(*issue, "--issuer", old, "--out", "record.json")
    assert "standing: accredited" in r.stdout and f"Rotating U ({old})" in r.stdout
    run("keys", "new", "--out", "other.key")
    r = run(*issue[:3], "--key", "other.key", *issue[5:], "--out", "other.json")
    assert "standing: unaccredited" in r.stdout and "not accredited" in r.stderr
