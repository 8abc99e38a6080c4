"""A LevelDB folder that lost its CURRENT file is refused, never taken for a new database.

Opened with create_if_missing, LevelDB would write a new, empty database over such a folder and delete
its table and log files as obsolete: every committed block lost. The store refuses it instead, naming
the folder and what is missing, and leaves every file as it was (so `plyvel.repair_db` on a copy can
still recover the chain).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import plyvel
import pytest
from helpers_chain import ChainBuilder, fixed_key, make_genesis, new_record
from node_proc import LER, NodeProc, init_node, make_chain

from ler import codec
from ler.keys import KeyPair
from node.config import DB_DIR
from storage.chain import ChainStore, StoreError

MISSING_CURRENT = r"the database in .* is corrupt: its CURRENT file is missing but it holds database files"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of `folder`, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_db_folder_without_current_is_refused_and_left_untouched(tmp_path: Path) -> None:
    authority, issuer = fixed_key(1), fixed_key(2)
    genesis = make_genesis([authority], [(issuer, ("degree",))])
    db = tmp_path / "db"
    chain = ChainBuilder(db, genesis, [authority])
    for _ in range(5):
        chain.commit([new_record(issuer, KeyPair.generate().did, rtype="degree")[1] for _ in range(3)])
    chain.close()
    ChainStore(db, genesis).close()  # opening again moves the log's writes into a table file
    assert any(p.suffix in (".ldb", ".sst") for p in db.iterdir()), sorted(p.name for p in db.iterdir())

    (db / "CURRENT").unlink()
    before = snapshot(db)
    with pytest.raises(StoreError, match=MISSING_CURRENT) as refused:
        ChainStore(db, genesis)
    message = str(refused.value)
    assert str(db) in message and "\n" not in message
    assert "restore the folder from a backup" in message and "sync the chain again from peers" in message
    assert snapshot(db) == before  # nothing deleted, added or changed

    copy = tmp_path / "copy"  # and the chain can still be recovered from it
    shutil.copytree(db, copy)
    plyvel.repair_db(str(copy))
    recovered = ChainStore(copy, genesis)
    try:
        assert recovered.height == 5
    finally:
        recovered.close()


@pytest.mark.parametrize("leftover", [None, (), ("LOCK", "LOG")])
def test_a_new_db_folder_is_still_created(tmp_path: Path, leftover: tuple[str, ...] | None) -> None:
    """Absent, empty, or with only LevelDB's lock and info log: a new database, as before."""
    genesis = make_genesis([fixed_key(1)])
    db = tmp_path / "db"
    if leftover is not None:
        db.mkdir()
        for name in leftover:
            (db / name).write_bytes(b"")
    store = ChainStore(db, genesis)
    try:
        assert store.height == 0
    finally:
        store.close()
    assert (db / "CURRENT").exists()


@pytest.mark.slow
def test_ler_node_run_refuses_a_db_folder_without_current(tmp_path: Path) -> None:
    """The tester's reproduction, through the real CLI: the node exits non-zero with one error line."""
    chain = make_chain(tmp_path, chain_id="lost-current")
    data = init_node(chain, tmp_path / "node")
    node = NodeProc(data, [str(LER), "node", "run", "--data", str(data)]).start()
    try:
        for _ in range(3):
            node.commit([new_record(chain.issuer, KeyPair.generate().did, rtype="degree",
                                    chain=chain.chain_id)[1]])
        height = node.height()
    finally:
        assert node.terminate() == 0, node.log()
    node.start()  # the restart puts the blocks in a table file
    assert node.height() == height
    assert node.terminate() == 0, node.log()
    db = data / DB_DIR
    assert any(p.suffix in (".ldb", ".sst") for p in db.iterdir()), sorted(p.name for p in db.iterdir())

    (db / "CURRENT").unlink()
    before = snapshot(db)
    try:
        run = subprocess.run([str(LER), "node", "run", "--data", str(data)], capture_output=True, text=True,
                             env=node.env, stdin=subprocess.DEVNULL, timeout=30)
    except subprocess.TimeoutExpired as exc:  # (run() has killed it)
        pytest.fail(f"the node started on a db folder without CURRENT:\n{exc.stderr!r}")
    assert run.returncode == 1, run
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr
    assert errors[0].startswith(f"error: the node stopped: the database in {db} is corrupt: its CURRENT file "
                                "is missing"), run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert snapshot(db) == before


def test_damage_found_while_running_stops_the_node_naming_the_folder(tmp_path: Path) -> None:
    """A table damaged where start-up does not read: the node starts, and the first read of the damaged
    block (here a client's) is a 503 with the reason; then the node stops with one error line naming the
    folder, as for damage found at start, instead of serving on with /health saying all is well."""
    chain = make_chain(tmp_path, chain_id="damaged-table")
    data = init_node(chain, tmp_path / "node")
    node = NodeProc(data).start()
    try:
        # Block 1 larger than a table block (4 KiB): the bytes around it hold nothing else.
        for n in (40, 1, 1):
            node.commit([new_record(chain.issuer, KeyPair.generate().did, rtype="degree",
                                    chain=chain.chain_id)[1] for _ in range(n)])
    finally:
        assert node.terminate() == 0, node.log()
    node.start()  # the restart puts the blocks in a table file
    ((block_1, _),) = codec.decode(node.get("/peer/v1/blocks?from=1&to=1").body, 1 << 20)
    assert node.terminate() == 0, node.log()
    # One byte of block 1 itself (stored uncompressed), which nothing reads but a request for it.
    hits = [(t, t.read_bytes().find(block_1)) for t in sorted((data / DB_DIR).glob("*.ldb"))]
    ((table, at),) = [(t, i) for t, i in hits if i >= 0]
    damaged = bytearray(table.read_bytes())
    damaged[at + len(block_1) // 2] ^= 1
    table.write_bytes(bytes(damaged))

    node.start()
    try:
        assert node.get("/health").status == 200
        reply = node.get("/v1/blocks/1")
        assert reply.status == 503 and "corrupt" in reply.json()["error"], reply
        assert node.proc is not None
        try:
            code = node.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node served on after finding its database damaged:\n{node.log()}")
        assert code == 1, node.log()
    finally:
        node.close()
    log = node.log(None)
    db = data / DB_DIR
    assert f"event=database_damaged reason='the database in {db} is corrupt or unreadable" in log, log[-3000:]
    last = log.rstrip().splitlines()[-1]
    assert last.startswith(f"error: the node stopped: the database in {db} is corrupt or unreadable: Corruption: "
                           "block checksum mismatch"), log[-3000:]
    assert last.endswith("with the node stopped, restore the folder from a backup, or move it aside and start the "
                         "node again to sync the chain afresh from its peers (a node with no peers can only be "
                         "restored)"), last
    assert "Traceback" not in log, log[-3000:]
