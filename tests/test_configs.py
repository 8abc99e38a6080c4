"""configs/: the local network's file (what `scripts/testnet` starts) and the example node config.

Both are read by the real loaders here, so they cannot drift from what the code accepts; the example
must also equal the defaults it claims to show.
"""

from __future__ import annotations

import contextlib
import http.client as httpclient
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from node_proc import LER, full_disk, init_node, make_chain, wait_until

from ler.tx import check_chain_id
from node import procs, testnet
from node.config import BlockTiming, ConsensusTiming, GossipSettings, Limits, SyncSettings, load_config
from node.testnet import NETWORK_DEFAULTS, load_network_file

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_the_example_node_config_loads_and_shows_the_defaults(tmp_path: Path) -> None:
    shutil.copyfile(CONFIGS / "node.example.toml", tmp_path / "config.toml")
    cfg = load_config(tmp_path)
    assert (cfg.host, cfg.port, cfg.role, cfg.public_url) == ("127.0.0.1", 8701, "authority", "")
    assert (cfg.limits, cfg.blocks, cfg.consensus, cfg.gossip, cfg.sync) == (
        Limits(), BlockTiming(), ConsensusTiming(), GossipSettings(), SyncSettings())
    assert cfg.peers == ()
    # Every setting of every table is there, not only some.
    doc = tomllib.loads((CONFIGS / "node.example.toml").read_text())
    for table, cls in (("limits", Limits), ("blocks", BlockTiming), ("consensus", ConsensusTiming),
                       ("gossip", GossipSettings), ("sync", SyncSettings)):
        assert set(doc[table]) == set(cls.__dataclass_fields__), table


def test_the_testnet_file_is_four_authorities_and_an_observer() -> None:
    network, consensus = load_network_file(CONFIGS / "testnet.toml")
    assert network["authorities"] == 4 and network["observers"] == 1
    assert set(network) == set(NETWORK_DEFAULTS)
    check_chain_id(network["chain_id"])
    assert set(consensus) <= set(ConsensusTiming.__dataclass_fields__)


@pytest.mark.parametrize(("text", "error"), [
    ("[network\n", "network.toml"),  # not TOML
    ("[nodes]\n", "unknown table [nodes]"),
    ("[network]\nvalidators = 4\n", "unknown setting network.validators"),
    ("[network]\nauthorities = 0\n", "network.authorities must be a whole number from 1 to 64"),
    ("[network]\nauthorities = 4.0\n", "network.authorities must be a whole number"),
    ("[network]\nobservers = true\n", "network.observers must be a whole number"),
    ("[network]\nbase_port = 80\n", "network.base_port must be a whole number from 1024 to 65000"),
    ("[network]\nchain_id = 7\n", "network.chain_id must be a string"),
    ("network = 3\n", "must be tables"),
    ("[consensus]\npropose_ms = 3\n", "unknown setting 'propose_ms'"),
    ("[consensus]\npropose = -1.0\n", "propose must not be negative"),
    ("[consensus]\npropose = \"3\"\n", "propose must be a number"),
])
def test_a_bad_network_file_is_refused_with_its_fault(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "network.toml"
    path.write_text(text)
    with pytest.raises(testnet.TestnetError, match=error.replace("[", r"\[").replace(".", r"\.")):
        load_network_file(path)


def test_a_missing_network_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(testnet.TestnetError, match="cannot read the network file"):
        load_network_file(tmp_path / "nowhere.toml")


def ler(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    return subprocess.run([str(LER), *args], capture_output=True, text=True, timeout=120, env=env)


def test_testnet_up_takes_the_file_and_flags_win_over_it(tmp_path: Path) -> None:
    """One real node: the file's node counts and consensus timeout, the flag's chain id."""
    network = tmp_path / "net.toml"
    network.write_text('[network]\nchain_id = "from-file"\nauthorities = 1\nobservers = 0\nbase_port = 23811\n'
                       "[consensus]\npropose = 0.75\n")
    d = tmp_path / "net"
    r = ler("testnet", "up", "--dir", str(d), "--config", str(network), "--chain-id", "from-flag")
    try:
        assert r.returncode == 0, r.stderr
        manifest = json.loads((d / "testnet.json").read_text())
        assert manifest["chain_id"] == "from-flag"
        assert [n["role"] for n in manifest["nodes"]] == ["authority"]
        assert int(manifest["nodes"][0]["url"].rsplit(":", 1)[1]) >= 23811
        assert load_config(manifest["nodes"][0]["data"]).consensus.propose == 0.75
    finally:
        ler("testnet", "down", "--dir", str(d))
    bad = ler("testnet", "up", "--dir", str(tmp_path / "other"), "--config", str(tmp_path / "nowhere.toml"))
    assert bad.returncode != 0 and "cannot read the network file" in bad.stderr
    assert not (tmp_path / "other").exists()  # nothing made for a network it could not read


def test_testnet_nodes_flag_sets_and_checks_the_authority_count(tmp_path: Path) -> None:
    """`ler testnet up|down|status --dir DIR --nodes N`: N authorities when made; down and status refuse
    a network of another count (stopping nothing); an existing network restarts as made, with a note."""
    d = tmp_path / "net"
    clash = ler("testnet", "up", "--dir", str(d), "--nodes", "2", "--authorities", "3")
    assert clash.returncode == 2 and "disagree" in clash.stderr and not d.exists()
    r = ler("testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23831")
    try:
        assert r.returncode == 0, r.stderr
        manifest = json.loads((d / "testnet.json").read_text())
        assert [n["role"] for n in manifest["nodes"]] == ["authority", "authority"]
        assert ler("testnet", "status", "--dir", str(d), "--nodes", "2").returncode == 0
        for command in ("status", "down"):
            wrong = ler("testnet", command, "--dir", str(d), "--nodes", "3")
            assert wrong.returncode == 2 and "has 2 authority nodes, not 3" in wrong.stderr
        assert ler("testnet", "status", "--dir", str(d)).returncode == 0  # all still running
        assert ler("testnet", "down", "--dir", str(d), "--nodes", "2").returncode == 0
        again = ler("testnet", "up", "--dir", str(d), "--nodes", "3")
        assert again.returncode == 0, again.stderr
        assert "restarts as it was made (2 authorities, 0 observers)" in again.stdout
        assert len(json.loads((d / "testnet.json").read_text())["nodes"]) == 2
    finally:
        ler("testnet", "down", "--dir", str(d))
    plain = tmp_path / "plain"  # no counts and no network file: four authorities
    r = ler("testnet", "up", "--dir", str(plain), "--base-port", "23841")
    try:
        assert r.returncode == 0, r.stderr
        roles = [n["role"] for n in json.loads((plain / "testnet.json").read_text())["nodes"]]
        assert roles == ["authority"] * 4
    finally:
        ler("testnet", "down", "--dir", str(plain))


def test_up_on_a_network_with_a_dead_node_starts_that_node_only(tmp_path: Path) -> None:
    d = tmp_path / "net"
    assert ler("testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23871").returncode == 0
    try:
        first, second = json.loads((d / "testnet.json").read_text())["nodes"]
        os.kill(second["pid"], 9)
        deadline = time.monotonic() + 10
        while procs.alive(second["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        r = ler("testnet", "up", "--dir", str(d))
        assert r.returncode == 0, r.stderr
        now = json.loads((d / "testnet.json").read_text())["nodes"]
        assert now[0]["pid"] == first["pid"] and now[1]["pid"] not in (None, second["pid"])
        assert "(was running)" in r.stdout.splitlines()[0] and "(was running)" not in r.stdout.splitlines()[1]
        assert ler("testnet", "status", "--dir", str(d)).returncode == 0  # both answer
        again = ler("testnet", "up", "--dir", str(d))  # all running: nothing to start, nothing changes
        assert again.returncode == 0 and again.stdout.count("(was running)") == 2, again.stdout
        assert json.loads((d / "testnet.json").read_text())["nodes"] == now
    finally:
        ler("testnet", "down", "--dir", str(d))


def test_a_failed_up_says_why_and_leaves_no_node_running(tmp_path: Path) -> None:
    """A node of an existing network cannot start (another program took its port): `up` fails naming the
    node and its reason, and stops the nodes it did start, so a script finds nothing half-running."""
    d = tmp_path / "net"
    assert ler("testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23861").returncode == 0
    assert ler("testnet", "down", "--dir", str(d)).returncode == 0
    nodes = json.loads((d / "testnet.json").read_text())["nodes"]
    port = int(nodes[1]["url"].rsplit(":", 1)[1])
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the node's closed sockets linger
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = ler("testnet", "up", "--dir", str(d))
        assert r.returncode == 1 and "node authority2 exited" in r.stderr, r.stderr
        assert "address already in use" in r.stderr and "stopped again what this command started (authority1)" \
            in r.stderr, r.stderr
        after = json.loads((d / "testnet.json").read_text())["nodes"]
        assert [n["pid"] for n in after] == [None, None]
        assert not any(procs.alive(n["pid"]) for n in nodes + after if n["pid"])
        assert ler("testnet", "status", "--dir", str(d)).returncode == 1  # stopped, all of them
    finally:
        squatter.close()
        ler("testnet", "down", "--dir", str(d))
    assert ler("testnet", "up", "--dir", str(d)).returncode == 0  # the port is free again: it starts
    ler("testnet", "down", "--dir", str(d))


def test_an_interrupted_up_stops_what_it_started(tmp_path: Path) -> None:
    """Ctrl-C while `ler testnet up` waits for its nodes to answer: it stops them before it gives up, so
    nothing is left running that the user did not see start; the next `up` starts the network."""
    d = tmp_path / "net"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    proc = subprocess.Popen([str(LER), "testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23851"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Polled every 10 ms by hand (wait_until backs off to 0.25 s): the nodes answer about a second
        # after they start, and the interruption must come while `up` still waits for them.
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                pids = [n["pid"] for n in json.loads((d / "testnet.json").read_text())["nodes"]]
            if pids and all(pids):
                break
            time.sleep(0.01)
        assert pids and all(pids), "the nodes never started"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "aborted" in err, (proc.returncode, out, err)
        assert not any(procs.alive(pid) for pid in pids)
        assert [n["pid"] for n in json.loads((d / "testnet.json").read_text())["nodes"]] == [None, None]
        assert ler("testnet", "up", "--dir", str(d)).returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        ler("testnet", "down", "--dir", str(d))


def test_a_creation_stopped_midway_is_made_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while `up` makes a new network's folders: the next `up` removes the half-made node folders
    (no node ever ran from them) and makes the network, instead of refusing a folder made already. Only
    the node folders its creation named go: a name that points elsewhere in a tampered marker does not."""
    d = tmp_path / "net"
    made = []
    real_init = testnet.init_data_dir

    def init_then_stop(*args: Any, **kwargs: Any) -> Any:
        if made:
            raise KeyboardInterrupt
        made.append(real_init(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(testnet, "init_data_dir", init_then_stop)
    with pytest.raises(KeyboardInterrupt):
        testnet.up(d, authorities=2, base_port=23841)
    monkeypatch.undo()
    assert (d / "authority1" / "config.toml").exists() and not (d / "testnet.json").exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    marker = json.loads((d / testnet.CREATING).read_text())
    # Names that must not be removed, all inside tmp_path (should the check ever break, nothing else goes).
    marker["makes"] += ["../keep", "keys2"]
    (d / testnet.CREATING).write_text(json.dumps(marker))
    (d / "keys2").mkdir()
    try:
        r = ler("testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23841")
        assert r.returncode == 0, r.stderr
        assert ler("testnet", "status", "--dir", str(d)).returncode == 0
        assert not (d / testnet.CREATING).exists() and keep.is_dir() and (d / "keys2").is_dir()
    finally:
        ler("testnet", "down", "--dir", str(d))


def tree(d: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `d`, by relative path."""
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


def test_up_where_the_manifest_is_gone_refuses_and_changes_nothing(tmp_path: Path) -> None:
    """testnet.json lost or deleted: `up` must not make a network over the old one (its keys, the demo
    issuer's the only copy, its genesis and its chain). Every `up` refuses, saying what it found and
    what to do, and leaves the folder byte for byte; so does a marker no creation of this `up` wrote
    (an earlier version left one naming the node folder it then could not make)."""
    d = tmp_path / "net"
    try:
        r = ler("testnet", "up", "--dir", str(d), "--nodes", "1", "--base-port", "9640", "--seed")
        assert r.returncode == 0, r.stderr
        assert ler("testnet", "down", "--dir", str(d)).returncode == 0
        (d / "testnet.json").unlink()
        before = tree(d)
        assert "keys/demo-issuer.key" in before and "authority1/config.toml" in before
        for found in ("authority1/, demo/, genesis.json, keys/", ".creating, authority1/, demo/, genesis.json, keys/"):
            if found.startswith(".creating"):
                (d / ".creating").write_text('["authority1"]\n')
                before = tree(d)
            for _ in range(2):
                r = ler("testnet", "up", "--dir", str(d), "--nodes", "1", "--base-port", "9640")
                assert r.returncode == 1, (r.stdout, r.stderr)
                assert len(r.stderr.strip().splitlines()) == 1, r.stderr
                assert f"{d} has no testnet.json but holds a testnet's files ({found}); nothing was changed: " \
                       "restore its testnet.json to use that network, or choose an empty folder" in r.stderr, r.stderr
                assert tree(d) == before
        # status and down say the same, and send no one to the `up` that refuses.
        for command in ("status", "down"):
            r = ler("testnet", command, "--dir", str(d))
            assert f"{d} has no testnet.json (deleted?), which `ler testnet up` needs to use the network its " \
                   "node folders hold" in r.stderr and "use an empty folder" in r.stderr, r.stderr
            assert "makes one" not in r.stderr and "no testnet in" not in r.stderr, r.stderr
    finally:
        ler("testnet", "down", "--dir", str(d))


def test_a_creation_cut_short_runs_no_node_and_the_next_up_makes_it_afresh(tmp_path: Path) -> None:
    """The disk fills as `up` writes a new network's testnet.json, after its keys, genesis and node
    folders: it fails before any node runs from them, and the next `up` removes them (that creation's
    marker lists them) and makes the network. While a node has run from one of them (its log), they are
    no half-made creation any more: `up` refuses and removes nothing."""
    d = tmp_path / "net"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    args = [str(LER), "testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "9650"]
    try:
        # 600 bytes: room for a key, the genesis of 2 authorities (536) and a config, not the manifest.
        cut = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, preexec_fn=full_disk(600))
        assert cut.returncode == 1 and "testnet.json could not be written: File too large" in cut.stderr, cut.stderr
        assert (d / testnet.CREATING).exists() and not (d / "testnet.json").exists()
        for name in ("authority1", "authority2"):
            assert sorted(p.name for p in (d / name).iterdir()) == ["config.toml", "genesis.json", "node.key"]
        (d / "authority2" / "node.log").write_text("a node ran here\n")
        before = tree(d)
        r = ler(*args[1:])
        assert r.returncode == 1 and "holds a testnet's files (.creating, authority1/, authority2/, genesis.json, " \
            "keys/)" in r.stderr, r.stderr
        assert tree(d) == before
        (d / "authority2" / "node.log").unlink()
        r = ler(*args[1:])
        assert r.returncode == 0, r.stderr
        assert ler("testnet", "status", "--dir", str(d)).returncode == 0
        assert not (d / testnet.CREATING).exists()
        assert (d / "genesis.json").read_bytes() != before["genesis.json"]  # made afresh
    finally:
        ler("testnet", "down", "--dir", str(d))


GOOD_NODE = {"name": "authority1", "url": "http://127.0.0.1:1", "role": "authority", "pid": None,
             "data": "/nowhere/a1", "key": "/nowhere/a1.key"}
GOOD_MANIFEST = {"chain_id": "c", "genesis": "/nowhere/genesis.json", "nodes": [GOOD_NODE],
                 "demo_issuer_key": "/nowhere/demo.key", "demo_record_type": "degree"}


@pytest.mark.parametrize(("text", "fault"), [
    ("{not json", "cannot be read as a testnet manifest"),
    ("[]", "not a JSON object"),
    (json.dumps({**GOOD_MANIFEST, "chain_id": 7}), "chain_id is missing or not a string"),
    (json.dumps({**GOOD_MANIFEST, "nodes": {}}), "nodes is missing or not a list"),
    (json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "url": None}]}), "nodes[0].url is missing"),
    (json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "role": "boss"}]}), "nodes[0].role is not"),
    (json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "pid": "12"}]}), "nodes[0].pid is not a process id"),
    (json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "pid": True}]}), "nodes[0].pid is not a process id"),
    (json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "pid": -1}]}), "nodes[0].pid is not a process id"),
    (json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "pid": 2**31}]}), "nodes[0].pid is not a process id"),
])
def test_a_tampered_testnet_manifest_is_refused_with_its_fault(tmp_path: Path, text: str, fault: str) -> None:
    (tmp_path / "testnet.json").write_text(text)
    for command in ("up", "status", "down"):
        r = ler("testnet", command, "--dir", str(tmp_path))
        assert r.returncode == 1 and fault in r.stderr and str(tmp_path / "testnet.json") in r.stderr, r.stderr
        assert "unexpected" not in r.stderr
    assert (tmp_path / "testnet.json").read_text() == text  # left as it was


def test_a_manifest_that_cannot_be_written_is_left_as_it_was(tmp_path: Path) -> None:
    """`ler testnet down` on a full disk: it says so, and testnet.json stays whole (it was cut short
    before, and no later command could read it)."""
    text = json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "pid": 4242, "data": str(tmp_path / "a1")}]},
                      indent=2) + "\n"
    (tmp_path / "testnet.json").write_text(text)
    r = subprocess.run([str(LER), "testnet", "down", "--dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, preexec_fn=full_disk(64))
    assert r.returncode == 1 and "testnet.json could not be written: File too large" in r.stderr, r.stderr
    assert (tmp_path / "testnet.json").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["testnet.json"]
    assert ler("testnet", "down", "--dir", str(tmp_path)).returncode == 0  # with room, it goes on


def test_the_manifest_check_takes_a_well_formed_manifest() -> None:
    assert testnet._manifest_fault(GOOD_MANIFEST) is None
    assert testnet._manifest_fault({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "pid": 4242}]}) is None


@pytest.mark.parametrize("text", ["99999999999999999999999", "-1", "0", "2147483648", "x"])
def test_a_node_pid_file_holding_no_process_id_reads_as_stopped(tmp_path: Path, text: str) -> None:
    data = tmp_path / "a0"
    data.mkdir()
    (data / "node.pid").write_text(text)
    (tmp_path / "testnet.json").write_text(json.dumps({**GOOD_MANIFEST, "nodes": [{**GOOD_NODE, "data": str(data)}]}))
    assert testnet.running(tmp_path) == []
    for command in ("status", "down"):
        r = ler("testnet", command, "--dir", str(tmp_path))
        assert "unexpected" not in r.stderr, r.stderr


def test_a_dead_nodes_pid_taken_by_another_process_is_never_signalled(tmp_path: Path) -> None:
    """The nodes of a testnet died (killed, the machine restarted) and their pids went to other programs,
    or to another node: `ler testnet down` must leave those alone, and status must show the nodes stopped."""
    other = tmp_path / "other-node"
    impostors = [subprocess.Popen(["sleep", "60"]),
                 # a process that looks like a node, of another folder: the command line is what counts
                 subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "node", "run", "--data",
                                   str(other)])]
    try:
        nodes = []
        for i, p in enumerate(impostors):
            data = tmp_path / f"a{i}"
            data.mkdir()
            (data / "node.pid").write_text(str(p.pid))  # left behind by the dead node
            nodes.append({**GOOD_NODE, "name": f"authority{i}", "data": str(data), "pid": p.pid})
        (tmp_path / "testnet.json").write_text(json.dumps({**GOOD_MANIFEST, "nodes": nodes}))
        assert testnet.running(tmp_path) == []
        r = ler("testnet", "down", "--dir", str(tmp_path))
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
        assert all(p.poll() is None for p in impostors), "ler testnet down signalled a process not its node's"
    finally:
        for p in impostors:
            p.kill()
            p.wait()


def test_a_node_restarted_by_hand_is_one_the_testnet_commands_see_and_stop(tmp_path: Path) -> None:
    """The issue's way back after a kill -9: `ler node run --data <its data path>`. That process is the
    node's now (its node.pid), so `ler testnet status` shows it running and `ler testnet down` stops it."""
    d = tmp_path / "net"
    assert ler("testnet", "up", "--dir", str(d), "--nodes", "1", "--base-port", "23851").returncode == 0
    node = json.loads((d / "testnet.json").read_text())["nodes"][0]
    pid_file = Path(node["data"]) / "node.pid"
    restarted = None
    try:
        assert int(pid_file.read_text()) == node["pid"]  # written by the node itself
        os.kill(node["pid"], 9)
        deadline = time.monotonic() + 10
        while procs.alive(node["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        stale = ler("testnet", "status", "--dir", str(d))  # node.pid is left behind, naming a dead process
        assert stale.returncode == 1 and "stopped" in stale.stdout
        env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
        with open(tmp_path / "restarted.log", "wb") as log:
            restarted = subprocess.Popen([str(LER), "node", "run", "--data", node["data"]], stdout=log,
                                         stderr=log, env=env)
        deadline = time.monotonic() + 30
        while ler("testnet", "status", "--dir", str(d)).returncode != 0:
            assert time.monotonic() < deadline and restarted.poll() is None
            time.sleep(0.2)
        assert int(pid_file.read_text()) == restarted.pid
        rows = json.loads(ler("testnet", "status", "--dir", str(d), "--json").stdout)
        assert rows[0]["running"] and rows[0]["pid"] == restarted.pid
        down = ler("testnet", "down", "--dir", str(d))
        assert down.returncode == 0 and "stopped authority1" in down.stdout
        assert restarted.wait(15) == 0  # a clean stop (SIGTERM), which removes its node.pid
        assert not pid_file.exists()
    finally:
        if restarted is not None and restarted.poll() is None:
            restarted.kill()
        ler("testnet", "down", "--dir", str(d))


@pytest.mark.parametrize("manifest", ["deleted", "damaged"])
def test_down_without_the_manifest_stops_the_nodes_by_their_pid_files(tmp_path: Path, manifest: str) -> None:
    """testnet.json deleted or damaged while the network runs: `down` still stops every node, found by the
    node.pid of each node folder, and says it did so without testnet.json; `status` shows those folders
    and says why. A node folder whose node.pid names a process that is not that node (its pid taken by
    another program) is never signalled."""
    d = tmp_path / "net"
    assert ler("testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23891").returncode == 0
    nodes = json.loads((d / "testnet.json").read_text())["nodes"]
    pids = [n["pid"] for n in nodes]
    impostor = subprocess.Popen(["sleep", "60"])
    try:
        # A node's role is what its config.toml says (what it runs as once restarted), whatever `up` made it.
        config = d / "authority2" / "config.toml"
        config.write_text(config.read_text().replace('role = "authority"', 'role = "observer"', 1))
        roles = {row["name"]: row["role"] for row in json.loads(ler("testnet", "status", "--dir", str(d),
                                                                       "--json").stdout)}
        assert roles == {"authority1": "authority", "authority2": "observer"}
        (d / "observer1").mkdir()  # a dead node's folder whose pid went to another program
        (d / "observer1" / "node.pid").write_text(str(impostor.pid))
        if manifest == "deleted":
            (d / "testnet.json").unlink()
        else:
            (d / "testnet.json").write_text('{"chain_id": "cut sh')
        why = "has no testnet.json (deleted?)" if manifest == "deleted" else "cannot be read as a testnet manifest"
        shown = ler("testnet", "status", "--dir", str(d))
        assert shown.returncode == 1 and why in shown.stderr and "shown instead: the node folders" in shown.stderr
        rows = [line.split() for line in shown.stdout.splitlines()]
        assert [(r[0], r[1], r[3]) for r in rows] == [("authority1", "authority", "running"),
                                                      ("authority2", "observer", "running"),
                                                      ("observer1", "?", "stopped")], shown.stdout
        assert rows[0][2] == nodes[0]["url"] and "height" in shown.stdout
        assert ler("testnet", "status", "--dir", str(d), "--nodes", "3").returncode == 2  # 2 authority folders
        r = ler("testnet", "down", "--dir", str(d))
        assert r.returncode == 0, r.stderr
        assert why in r.stderr and "warning: " in r.stderr
        assert f"without testnet.json, by the node.pid of each node folder in {d}: stopped authority1, authority2" \
            in r.stdout, r.stdout
        assert not any(procs.alive(pid) for pid in pids)
        for node in nodes:  # each stopped cleanly, as `down` stops them with testnet.json
            assert "event=node_stopped" in (Path(node["data"]) / "node.log").read_text(), node["name"]
        assert impostor.poll() is None, "down signalled a process that is not a node of the network"
        again = ler("testnet", "down", "--dir", str(d))
        assert again.returncode == 0 and "no node was running" in again.stdout
        assert not (d / "testnet.json").exists() if manifest == "deleted" else \
            (d / "testnet.json").read_text() == '{"chain_id": "cut sh'  # left as it was
    finally:
        impostor.kill()
        impostor.wait()
        for pid in pids:
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)


def lock_held(path: Path) -> bool:
    """Whether another process holds an flock on `path` (as `ler testnet up` does on DIR/testnet.lock)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_second_up_while_one_runs_fails_at_once_and_a_killed_ups_lock_blocks_nothing(tmp_path: Path) -> None:
    """Two `ler testnet up` on one folder at the same time: the second fails at once, saying so, and starts
    nothing, so testnet.json lists the nodes that run (not the second one's, dead on the first one's
    databases). An `up` on a running network says it runs already. An `up` killed while it held the lock
    leaves the lock file, which does not stop the next `up`."""
    d = tmp_path / "net"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    args = [str(LER), "testnet", "up", "--dir", str(d), "--nodes", "2", "--base-port", "23901"]
    # Both start together and race for the lock: the loser tries it while the winner holds it (loading
    # takes a fraction of a second, starting the network several), whichever process that is.
    ups = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
           for _ in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in ups]
        done = [(p.returncode, out, err) for p, (out, err) in zip(ups, outs, strict=True)]
        won = [r for r in done if r[0] == 0]
        lost = [r for r in done if r[0] != 0]
        assert len(won) == 1 and len(lost) == 1, done
        code, _, err = lost[0]
        assert code == 1, done
        assert f"another `ler testnet up` is starting the network in {d} now" in err, err
        assert "nothing was started" in err
        nodes = json.loads((d / "testnet.json").read_text())["nodes"]
        assert all(procs.alive(n["pid"]) for n in nodes), nodes
        assert ler("testnet", "status", "--dir", str(d)).returncode == 0
        again = ler(*args[1:])
        assert again.returncode == 0 and "was running already: every node runs, none was started" in again.stdout
        assert json.loads((d / "testnet.json").read_text())["nodes"] == nodes
        assert ler("testnet", "down", "--dir", str(d)).returncode == 0

        killed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_until(lambda: lock_held(d / "testnet.lock") or killed.poll() is not None, 60,
                   "the up to be killed to take its lock")
        killed.kill()
        killed.wait()
        assert (d / "testnet.lock").exists() and not lock_held(d / "testnet.lock")
        after = ler(*args[1:])
        assert after.returncode == 0, after.stderr
        assert ler("testnet", "status", "--dir", str(d)).returncode == 0
    finally:
        for p in ups:
            if p.poll() is None:
                p.kill()
        ler("testnet", "down", "--dir", str(d))


# --- a node's config.toml, as `ler node init` and `ler node run` meet it ------------------------------------

def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_node_init_refuses_a_listen_host_that_can_never_be_bound(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    r = ler("node", "init", "--genesis", str(chain.genesis_path), "--key", str(chain.authority_key_path),
            "--data", str(tmp_path / "node"), "--listen", "bad host:80")
    assert r.returncode == 2
    assert "[node] listen 'bad host:80': the host 'bad host' is neither" in one_error_line(r)
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("edit", "words"), [
    (lambda t: t.replace(b"127.0.0.1:", b"999.1.1.1:", 1),
     "[node] listen '999.1.1.1:{port}': the host '999.1.1.1' is not an IPv4 address"),
    (lambda t: t.replace(b"127.0.0.1:", b"bad host:", 1), "[node] listen 'bad host:{port}': the host 'bad host'"),
    (lambda t: t.replace(b"[limits]\n", b"[limits]\nmempool_bytes = 1\n", 1),
     "mempool_bytes must be at least 4,096 (the largest transaction a node accepts); it is 1"),
    (lambda t: b"# \xff\n" + t, "config.toml is not UTF-8 text (byte 0xff at offset 2, line 1); save it as UTF-8"),
], ids=["ipv4-out-of-range", "space-in-host", "mempool-smaller-than-a-tx", "not-utf8"])
def test_node_run_refuses_an_unusable_config_in_one_line_naming_it(tmp_path: Path, edit: Any, words: str) -> None:
    data = init_node(make_chain(tmp_path), tmp_path / "node")
    cfg = data / "config.toml"
    port = load_config(data).port
    cfg.write_bytes(edit(cfg.read_bytes()))
    r = ler("node", "run", "--data", str(data))
    assert r.returncode == 2
    line = one_error_line(r)
    assert str(cfg) in line and words.format(port=port) in line, line
    assert "codec" not in line


@pytest.mark.parametrize(("host", "why"), [
    # TEST-NET-1: no machine's own address
    ("192.0.2.1", "cannot assign requested address: 192.0.2.1 is not an address of this machine"),
    ("no-such-host.invalid", "the host 'no-such-host.invalid' is not known"),  # .invalid never resolves
])
def test_a_listen_address_that_cannot_be_bound_stops_the_node_naming_the_setting(tmp_path: Path, host: str,
                                                                                  why: str) -> None:
    data = init_node(make_chain(tmp_path), tmp_path / "node")
    cfg = data / "config.toml"
    port = load_config(data).port
    cfg.write_text(cfg.read_text().replace("127.0.0.1:", f"{host}:", 1))
    r = ler("node", "run", "--data", str(data))
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line == (f"error: the node stopped: cannot listen at [node] listen = '{host}:{port}' ({cfg}): {why}"
                    + (" (it resolves to no address)" if host.endswith(".invalid") else "")), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (data / "node.pid").exists()


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_node_listens_at_a_bracketed_ipv6_address(tmp_path: Path) -> None:
    if not ipv6_loopback_works():
        pytest.skip("no IPv6 loopback on this machine")
    data = init_node(make_chain(tmp_path), tmp_path / "node")
    cfg = data / "config.toml"
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{load_config(data).port}", f"[::1]:{port}", 1))
    assert load_config(data).url == f"http://[::1]:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LER_")}
    with open(tmp_path / "node.log", "wb") as log:
        proc = subprocess.Popen([str(LER), "node", "run", "--data", str(data)], stdout=log, stderr=log, env=env,
                                start_new_session=True)
    try:
        def answered() -> dict[str, Any] | None:
            assert proc.poll() is None, (tmp_path / "node.log").read_text()
            with contextlib.suppress(OSError):
                conn = httpclient.HTTPConnection("::1", port, timeout=2)
                try:
                    conn.request("GET", "/v1/status")
                    resp = conn.getresponse()
                    return json.loads(resp.read()) if resp.status == 200 else None
                finally:
                    conn.close()
            return None

        status = wait_until(answered, 30, f"the node at [::1]:{port} to answer")
        assert status["height"] >= 0
        assert f"url=http://[::1]:{port}" in (tmp_path / "node.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_up_says_why_a_node_it_waited_for_ended(tmp_path: Path) -> None:
    """`ler testnet up` waiting for a node that exits names the reason from the node's log: its last
    error line, or, for a clean stop after its latest start (a signal, as `ler testnet down` sends while
    the `up` still runs), that it was told to stop, not "no reason"."""
    log = tmp_path / "node.log"
    run_1 = ["event=node_started chain=c height=0", "event=node_stopping height=3", "event=node_stopped"]
    cases = [
        ([*run_1, "event=node_started chain=c height=3", "event=node_stopping height=3"], "it was told to stop"),
        ([*run_1, "event=node_started chain=c height=3"], "no reason in its log"),  # the stop was an older run's
        (["event=node_started chain=c height=0", "error: the database is locked"], "the database is locked"),
        (["event=node_started", "event=node_stopping height=0", "error: key used elsewhere"], "key used elsewhere"),
        ([], "no reason in its log"),
    ]
    for lines, says in cases:
        log.write_text("".join(line + "\n" for line in lines))
        assert says in testnet._last_error(log), (lines, testnet._last_error(log))
    assert testnet._last_error(tmp_path / "missing.log") == "no log"
