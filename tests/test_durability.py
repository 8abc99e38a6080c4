"""Crash and restart with real processes: what a node acknowledged survives kill -9, nothing is applied
twice, and the chain it restarts from is whole. SIGTERM stops it cleanly while transactions flow.

A client thread keeps submitting small batches (some with ?wait=1) and notes every transaction the node
acknowledged (202 pending or 200 committed) and the highest committed height it was told about. The node
is killed at a seeded random point (after a random number of acknowledgements), restarted with
`ler node run --data DIR`, and checked.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from node_proc import (
    LER,
    Chain,
    NodeProc,
    Reply,
    free_port,
    full_disk,
    http,
    init_node,
    make_chain,
    tx_json_body,
    wait_until,
)

from ler.block import CommitCertificate, Header
from ler.bundle import verify_bundle
from ler.keys import KeyPair, write_key_file
from ler.record import RecordDocument, make_claims
from ler.tx import RecordAnchor, Tx, sign_tx
from node.config import init_data_dir
from storage.chain import ChainStore, StoreError

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("LER_TEST_SEED", "20240611"))  # another seed: other kill points
ROUNDS = 4


@dataclass
class Client:
    """Submits anchors in a loop until told to stop; remembers what the node acknowledged."""

    chain: Chain
    url: str
    rng: random.Random
    signers: list[KeyPair]
    acked: dict[bytes, str] = field(default_factory=dict)      # tx id -> status when acknowledged
    docs: dict[bytes, RecordDocument] = field(default_factory=dict)  # tx id -> the record it anchors
    max_committed: int = 0
    errors: int = 0
    failure: BaseException | None = None  # what ended the loop early (re-raised by check())
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make_tx(self) -> Tx:
        key = self.rng.choice(self.signers)
        doc = RecordDocument(chain_id=self.chain.chain_id, record_id=os.urandom(16), issuer=key.did,
                             holder=KeyPair.generate().did, rtype="degree", expires=None,
                             claims=make_claims({"degree": "BSc", "n": self.rng.randrange(10**9)}))
        tx = sign_tx(key, self.chain.chain_id, RecordAnchor(record=doc.record_id, issuer=key.did,
                                                            holder=doc.holder, rtype="degree",
                                                            commitment=doc.commitment, expires=None))
        self.docs[tx.tx_id] = doc
        return tx

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.failure = exc

    def check(self) -> None:
        if self.failure is not None:
            raise AssertionError(f"the client failed: {self.failure!r}") from self.failure

    def _loop(self) -> None:
        while not self.stop.is_set():
            txs = [self.make_tx() for _ in range(self.rng.choice((1, 1, 2, 5, 20)))]
            wait = self.rng.random() < 0.3
            try:
                r = http(self.url, "POST", "/v1/txs?wait=1&timeout=5" if wait else "/v1/txs", tx_json_body(txs),
                         "application/json", timeout=15)
            except OSError:  # refused or cut off mid-request: the node is down; nothing was acknowledged
                self.errors += 1
                if self.stop.wait(0.01):
                    return
                continue
            if r.status not in (200, 202):
                raise AssertionError(f"a good batch was refused: {r}")
            with self.lock:
                for res in r.json()["results"]:
                    assert res["status"] in ("pending", "committed"), res
                    self.acked[bytes.fromhex(res["id"])] = res["status"]
                    if res["status"] == "committed":
                        self.max_committed = max(self.max_committed, res["height"])

    def ack_count(self) -> int:
        self.check()
        with self.lock:
            return len(self.acked)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Chain, Path, list[NodeProc]]]:
    chain = make_chain(tmp_path, chain_id="crash-test")
    data = init_node(chain, tmp_path / "node")
    procs: list[NodeProc] = []
    yield chain, data, procs
    for p in procs:
        p.close()


def start(data: Path, procs: list[NodeProc], via_script: bool) -> NodeProc:
    """`python -m node.cli node run` the first time, the `ler` console script after a crash."""
    node = NodeProc(data, [str(LER), "node", "run", "--data", str(data)] if via_script else None)
    procs.append(node)
    return node.start()


def last_start(node: NodeProc) -> tuple[int, int]:
    """(height, pending_reloaded) from the node's last event=node_started log line."""
    line = [ln for ln in node.log(tail=None).splitlines() if "event=node_started" in ln][-1]
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    return int(fields["height"]), int(fields["pending_reloaded"])


def committed_tx_ids(node: NodeProc, chain: Chain) -> list[bytes]:
    """Every tx id of blocks 1..height, in order; each block's certificate and parent link checked."""
    height = node.height()
    ids: list[bytes] = []
    prev = chain.genesis.hash
    for h in range(1, height + 1):
        block = node.get_json(f"/v1/blocks/{h}")
        header = Header.from_json(block["header"])
        assert header.height == h and header.prev == prev, f"block {h} does not extend block {h - 1}"
        cert = CommitCertificate.from_json(block["cert"])
        assert cert.height == h and cert.block == header.hash
        cert.verify(chain.chain_id, chain.genesis.validators)
        prev = header.hash
        ids.extend(bytes.fromhex(i) for i in block["txs"])
    return ids


def test_kill_9_at_random_points_loses_no_acknowledged_transaction(setup: tuple[Chain, Path, list[NodeProc]]
                                                                   ) -> None:
    chain, data, procs = setup
    rng = random.Random(SEED)
    signers = [chain.issuer, KeyPair.generate(), KeyPair.generate()]
    all_acked: dict[bytes, str] = {}
    docs: dict[bytes, RecordDocument] = {}
    max_seen = 0
    node = start(data, procs, via_script=False)
    for rnd in range(ROUNDS):
        client = Client(chain, node.url, random.Random(rng.random()), signers)
        worker = threading.Thread(target=client.run, name=f"client-{rnd}")
        worker.start()
        try:
            target = rng.randrange(5, 150)

            def enough(c: Client = client, t: int = target) -> bool:
                return c.ack_count() >= t

            wait_until(enough, 60, f"{target} acknowledged transactions")
            node.kill()  # SIGKILL: mid-request, mid-block, wherever the node happens to be
        finally:
            client.stop.set()
            worker.join(30)
        assert not worker.is_alive()
        client.check()
        all_acked.update(client.acked)
        docs.update(client.docs)
        max_seen = max(max_seen, client.max_committed)

        node = start(data, procs, via_script=True)  # it must start: nothing was left half-written
        assert node.height() >= max_seen, "the node restarted behind a height it had reported committed"
        done = node.wait_committed(all_acked, timeout=60)  # acknowledged before the kill -> committed after
        # Every block since the restart holds exactly the transactions it reloaded from its pending set.
        started_at, reloaded = last_start(node)
        assert started_at >= max_seen

        def since_restart(n: NodeProc = node, h0: int = started_at) -> list[str]:
            return [tx_id for h in range(h0 + 1, n.height() + 1) for tx_id in n.get_json(f"/v1/blocks/{h}")["txs"]]

        # What it reloaded may include transactions written but never answered (killed before the reply):
        # nobody waits for those, so wait here until they are in blocks too.
        def all_in(want: int = reloaded) -> tuple[list[str]] | None:
            got = since_restart()
            return (got,) if len(got) >= want else None

        (after,) = wait_until(all_in, 60, f"the {reloaded} reloaded transaction(s) to commit")
        assert len(after) == reloaded
        assert {i.hex() for i, st in done.items() if st["height"] > started_at} <= set(after)

    ids = committed_tx_ids(node, chain)
    assert len(ids) == len(set(ids)), "a transaction was committed twice"
    assert set(all_acked) <= set(ids)
    for tx_id in rng.sample(sorted(all_acked), 20):
        st = node.tx_status(tx_id)
        assert st is not None and st["status"] == "committed"
        assert bytes.fromhex(node.get_json(f"/v1/blocks/{st['height']}")["txs"][st["index"]]) == tx_id

    # A record of the last block proves itself with nothing but the genesis file.
    last = node.get_json(f"/v1/blocks/{node.height()}")
    tx_id = next(bytes.fromhex(i) for i in last["txs"] if bytes.fromhex(i) in docs)
    doc = docs[tx_id]
    r = node.post_json(f"/v1/records/{doc.record_id.hex()}/bundle", {"disclosure": doc.disclose(["degree"]).to_json()})
    assert r.status == 200, r
    result = verify_bundle(r.body, chain.genesis)
    assert result.verdict in ("valid", "unaccredited"), [c for c in result.checks if not c.ok]
    assert result.records[0].disclosed == {"degree": "BSc"}
    assert (result.verdict == "valid") == (doc.issuer == chain.issuer.did)
    assert node.terminate() == 0


def test_sigterm_stops_cleanly_while_transactions_flow(setup: tuple[Chain, Path, list[NodeProc]]) -> None:
    chain, data, procs = setup
    node = start(data, procs, via_script=False)
    client = Client(chain, node.url, random.Random(SEED + 1), [chain.issuer, KeyPair.generate()])
    worker = threading.Thread(target=client.run, name="client")
    worker.start()
    try:
        wait_until(lambda: client.ack_count() >= 100 and client.max_committed >= 2, 60, "traffic")
        code = node.terminate(timeout=10)  # fails the test if it takes longer
    finally:
        client.stop.set()
        worker.join(30)
    client.check()
    assert code == 0, node.log()
    assert "event=node_stopped" in node.log()

    # What the node left on disk: a whole chain at its last block (read with the node stopped).
    with ChainStore(data / "db", chain.genesis) as store:
        last = store.height
        assert last >= client.max_committed
        assert store.cert(last) is not None and store.block(last) is not None

    node = start(data, procs, via_script=True)
    assert node.height() >= last
    status = node.get_json("/v1/status")
    assert status["height"] >= last and status["producing"] is True
    if node.height() == last:  # nothing was pending: the head is the block it stopped at
        assert status["latest_block"] == node.get_json(f"/v1/blocks/{last}")["hash"]
    node.wait_committed(client.acked, timeout=60)
    ids = committed_tx_ids(node, chain)
    assert len(ids) == len(set(ids))
    assert node.terminate() == 0
    wait_until(lambda: not node.running(), 5, "the process to be gone")


def test_sigterm_answers_waiting_clients_and_keeps_their_transactions(tmp_path: Path) -> None:
    """A client waiting (?wait=1) on transactions the last block could not take is answered at shutdown
    (pending), not held until its wait times out; the transactions commit after the restart.

    block_txs 2 and batch_ms 3000: the producer sleeps 3 s before each block and takes at most 2
    transactions, so after SIGTERM it makes one last block and leaves the rest pending.
    """
    chain = make_chain(tmp_path, chain_id="stop-test")
    data = init_node(chain, tmp_path / "node", limits={"block_txs": 2, "wait_timeout_s": 30},
                     blocks={"batch_ms": 3000})
    node = NodeProc(data).start()
    try:
        first = Client(chain, node.url, random.Random(1), [chain.issuer]).make_tx()
        assert node.submit([first]).status == 202  # the producer now sleeps batch_ms
        node.send_signal_term()
        wait_until(lambda: "event=node_stopping" in node.log(), 10, "the node to begin stopping")
        later = [Client(chain, node.url, random.Random(2), [chain.issuer]).make_tx() for _ in range(3)]
        answers: list[Reply] = []
        waiter = threading.Thread(target=lambda: answers.append(node.submit(later, wait=True, timeout=30)))
        waiter.start()  # accepted while the last block is being made
        wait_until(lambda: node.tx_status(later[-1].tx_id), 5, "the late transactions to be accepted")
        assert node.proc is not None
        try:
            code = node.proc.wait(10)  # well before the 30 s the client asked to wait
        except subprocess.TimeoutExpired:
            pytest.fail("a waiting client held the node's shutdown up")
        waiter.join(10)
        assert code == 0, node.log()
        [r] = answers
        assert r.status == 202, r
        statuses = [x["status"] for x in r.json()["results"]]
        assert statuses.count("pending") >= 2, statuses
    finally:
        node.close()
    node = NodeProc(data, [str(LER), "node", "run", "--data", str(data)]).start()
    try:
        node.wait_committed([first.tx_id, *(t.tx_id for t in later)], timeout=30)
    finally:
        assert node.terminate() == 0


def test_sigterm_is_not_held_up_by_a_stalled_upload(tmp_path: Path) -> None:
    """A client sent a request's headers but not (yet) its body: SIGTERM still stops the node promptly.

    (aiohttp drops bytes arriving after shutdown begins, so such a handler never completes; the node
    bounds the graceful part of its shutdown.)
    """
    chain = make_chain(tmp_path, chain_id="stall-test")
    node = NodeProc(init_node(chain, tmp_path / "node")).start()
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{")
        # The handler is now waiting for the rest of the body; the node still serves others meanwhile.
        assert node.height() == 0
        node.send_signal_term()
        assert node.proc is not None
        try:
            code = node.proc.wait(15)
        except subprocess.TimeoutExpired:
            node.kill()
            pytest.fail("a stalled upload held the node's shutdown up")
    assert code == 0, node.log()
    assert "event=node_stopped" in node.log()


def test_sighup_stops_the_node_cleanly_unless_it_was_started_to_ignore_it(tmp_path: Path) -> None:
    """The terminal a node runs in closes (SIGHUP): a clean stop, as on SIGTERM, not the default death
    mid-write. Started under `nohup` (SIGHUP ignored), it goes on ignoring it."""
    chain = make_chain(tmp_path, chain_id="hup-test")
    data = init_node(chain, tmp_path / "node")
    # As from a terminal: SIGHUP at its default, even if this test run was started under nohup (whose
    # ignored SIGHUP every child would inherit, and the node would rightly go on ignoring).
    node = NodeProc(data, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)).start()
    try:
        tx = Client(chain, node.url, random.Random(1), [chain.issuer]).make_tx()
        assert node.submit([tx]).status == 202
        node.wait_committed([tx.tx_id], timeout=30)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        try:
            code = node.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no stop 15 s after SIGHUP; the node's log:\n{node.log()}")
        assert code == 0, node.log()
        assert "event=node_stopped" in node.log()
    finally:
        node.close()
    ignoring = NodeProc(data, ["bash", "-c", f'trap "" HUP && exec "{sys.executable}" -m node.cli node run '
                                             f'--data "{data}"']).start()
    try:
        assert ignoring.proc is not None
        ignoring.proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            ignoring.proc.wait(2)
        assert ignoring.get("/v1/status").status == 200
    finally:
        assert ignoring.terminate() == 0


# --- a disk that refuses writes ---------------------------------------------------------------------------

FILE_LIMIT = 1024 * 1024  # RLIMIT_FSIZE: no file of the node may grow past this, as on a disk that is full


def test_a_disk_that_refuses_writes_stops_the_node_with_the_reason_and_loses_nothing(tmp_path: Path) -> None:
    """LevelDB's writes start failing (files may not grow: the failure a full disk gives). The node stops
    and says why; nothing it acknowledged is lost; started again with room to write, it goes on."""
    chain = make_chain(tmp_path, chain_id="full-disk")
    node = NodeProc(init_node(chain, tmp_path / "node"))
    with open(node.log_path, "ab") as log:
        node.proc = subprocess.Popen(node.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=node.env,
                                     start_new_session=True, preexec_fn=full_disk(FILE_LIMIT))
    node.wait_ready()
    client = Client(chain, node.url, random.Random(SEED), [chain.issuer])
    refused = 0
    try:
        while node.proc.poll() is None and refused < 50:
            batch = [client.make_tx() for _ in range(50)]
            try:
                r = node.submit(batch, wait=True, timeout=10)
            except OSError:
                continue  # the node went down during the request: nothing of it was acknowledged
            if r.status in (200, 202):
                for tx, res in zip(batch, r.json()["results"], strict=True):
                    client.acked[tx.tx_id] = res["status"]
            else:
                assert r.status == 503 and "could not be written" in r.json()["error"], r  # not a 500
                refused += 1
        assert node.proc.wait(60) == 1, node.log()
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
    log = node.log()
    assert "error: the node stopped: the database in" in log and "could not be written" in log, log[-2000:]
    assert "File too large" in log and "Traceback" not in log and "TaskGroup" not in log, log[-2000:]
    assert client.acked, "the node refused everything: the limit is too low to test anything"

    node.start()  # no limit now
    node.wait_committed(list(client.acked), timeout=60)  # every acknowledged transaction, committed
    node.commit([client.make_tx()])  # and it goes on
    assert node.terminate() == 0, node.log()


def test_a_disk_that_refuses_writes_while_syncing_stops_the_node_and_blames_no_peer(tmp_path: Path) -> None:
    """The same fault met by block sync: it is this node's, so the node stops with the reason instead of
    taking it for a bad answer, turning from peer to peer while it serves reads it can no longer advance."""
    chain = make_chain(tmp_path, chain_id="full-disk-sync")
    source = NodeProc(init_node(chain, tmp_path / "authority")).start()
    try:
        client = Client(chain, source.url, random.Random(SEED), [chain.issuer])
        for _ in range(12):  # about 3 MB of blocks, well past what the observer may write
            source.commit([client.make_tx() for _ in range(200)])
        key_path = tmp_path / "observer.key"
        write_key_file(key_path, KeyPair.generate())
        data = tmp_path / "observer"
        init_data_dir(data, chain.genesis_path, key_path, f"127.0.0.1:{free_port()}", role="observer",
                      peers=(source.url,))
        observer = NodeProc(data)
        with open(observer.log_path, "ab") as log:
            observer.proc = subprocess.Popen(observer.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                             env=observer.env, start_new_session=True, preexec_fn=full_disk(FILE_LIMIT))
        try:
            code = observer.proc.wait(60)
        except subprocess.TimeoutExpired:
            observer.proc.kill()
            pytest.fail("the observer kept running with a database it cannot write:\n" + observer.log(3000))
        log = observer.log()
        assert code == 1 and "error: the node stopped: the database in" in log, log[-2000:]
        assert "could not be written" in log and "event=sync_failed" not in log, log[-2000:]
        assert "Traceback" not in log, log[-2000:]
        observer.start()  # no limit now: it syncs the rest
        wait_until(lambda: observer.height() == source.height() or None, 60, "the observer caught up")
        observer.terminate()
    finally:
        source.terminate()


def test_an_authority_node_whose_key_is_no_validator_is_warned_of_once_at_start(tmp_path: Path) -> None:
    """It runs (a governance vote may add it later) but says, once, that it will not vote until then; a
    genesis authority says nothing of the kind."""
    chain = make_chain(tmp_path, chain_id="outsider")
    outsider = KeyPair.generate()
    write_key_file(tmp_path / "outsider.key", outsider)
    init_data_dir(tmp_path / "outsider", chain.genesis_path, tmp_path / "outsider.key", f"127.0.0.1:{free_port()}")
    node = NodeProc(tmp_path / "outsider")
    member = NodeProc(init_node(chain, tmp_path / "member"))
    try:
        node.start()
        member.start()
        lines = [ln for ln in node.log(tail=None).splitlines() if "event=not_a_validator" in ln]
        assert len(lines) == 1 and "level=WARNING" in lines[0], node.log()
        assert f"node={outsider.did} height=0 " in lines[0], lines[0]
        assert "not an authority at height 1" in lines[0] and "votes from the height a governance vote" in lines[0]
        assert "event=node_started" in member.log(tail=None)
        assert "event=not_a_validator" not in member.log(tail=None)
    finally:
        node.close()
        member.close()


def open_error(data: Path, preexec_fn: Any = None, wrap: list[str] | None = None) -> str:
    """`ler node run` on `data` that fails at start: its one error line (exit status 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    r = subprocess.run([*(wrap or []), str(LER), "node", "run", "--data", str(data)], capture_output=True,
                       text=True, timeout=60, env=env, preexec_fn=preexec_fn)
    assert r.returncode == 1, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: the node stopped: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return lines[-1]


def test_a_database_on_a_full_disk_says_to_free_space_and_blames_no_other_node(tmp_path: Path) -> None:
    data = init_node(make_chain(tmp_path), tmp_path / "node")
    line = open_error(data, preexec_fn=full_disk(0))  # no file may grow: LevelDB cannot write its MANIFEST
    assert f"cannot open the data folder {data.resolve() / 'db'}" in line and "File too large" in line, line
    assert "free some space on that disk and start the node again" in line and "another node" not in line, line


def test_a_database_on_a_read_only_disk_says_so_and_blames_no_other_node(tmp_path: Path) -> None:
    """The db folder bind-mounted read-only, in a mount namespace of the node's own (unshare)."""
    data = init_node(make_chain(tmp_path), tmp_path / "node")
    db = data / "db"
    db.mkdir()
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "mount", "--bind", "-o", "ro",
                            str(db), str(db)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.decode(errors='replace').strip()}")
    line = open_error(data, wrap=["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                  'mount --bind -o ro "$0" "$0" && exec "$@"', str(db)])
    assert f"cannot open the data folder {db.resolve()}" in line and "Read-only file system" in line, line
    assert "mounted read-only: remount it writable" in line and "another node" not in line, line


def test_a_database_locked_by_another_store_still_asks_whether_another_node_uses_it(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    store = ChainStore(tmp_path / "db", chain.genesis)
    try:
        with pytest.raises(StoreError, match=r"LOCK: .* \(is another node using it\?\)$"):
            ChainStore(tmp_path / "db", chain.genesis)
    finally:
        store.close()


def test_a_second_node_on_a_folder_whose_lock_file_was_deleted_is_refused(tmp_path: Path) -> None:
    """db/LOCK deleted while the node runs no longer keeps a second one out (LevelDB locks a new file);
    node.pid, naming the live node, does. A pid file naming a live process of another program (the dead
    node's id, taken since) does not keep the node from starting."""
    data = init_node(make_chain(tmp_path), tmp_path / "node")
    first = NodeProc(data)
    try:
        first.start()
        (data / "db" / "LOCK").unlink()
        line = open_error(data)
        assert line == (f"error: the node stopped: cannot open the data folder {data.resolve()}: another node runs "
                        f"on it (process {first.pid}, named in {data.resolve() / 'node.pid'}); stop it first"), line
        assert first.running() and int((data / "node.pid").read_text()) == first.pid
        assert first.terminate() == 0, first.log()
    finally:
        first.close()
    other = subprocess.Popen(["sleep", "60"])  # alive, and no ler node
    try:
        (data / "node.pid").write_text(f"{other.pid}\n")
        again = NodeProc(data).start()
        assert int((data / "node.pid").read_text()) == again.pid
        assert again.terminate() == 0
    finally:
        other.kill()
        other.wait()
