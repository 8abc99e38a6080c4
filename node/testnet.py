"""A local test network on 127.0.0.1: make keys and genesis, start node processes, seed demo data.

`ler testnet up --dir DIR [--config configs/testnet.toml]` creates the network the first time (its shape
from flags, else the network file, else NETWORK_DEFAULTS), returns once every node answers and writes
DIR/testnet.json:
{"chain_id", "genesis": path, "nodes": [{"name", "url", "role", "pid", "data": path, "key": path}],
"demo_issuer_key": path, "demo_record_type"}. The demo issuer is accredited for demo_record_type in the
genesis, so it can anchor accredited records as soon as `up` returns. Every node lists every other as a
peer with its did ([[peers.nodes]]), so observers are known to the authorities too. A node restarts
with `ler node run --data <its data path>`; a running node keeps its process id in <data>/node.pid, so
`status` and `down` see a node restarted that way as well as those `up` started.
`ler testnet down --dir DIR` stops them (SIGTERM, then SIGKILL after a grace period);
`ler testnet status --dir DIR` reports each node. With testnet.json missing or unreadable, both fall back
to the node folders in DIR (authority1, observer1, ...) and say so: a node is running if its node.pid
names a live `ler node run` of that folder (node/procs.py), so `down` can still stop the network, and
never signals a process that took the pid of a node that died. `up` holds an exclusive lock
(fcntl.flock) on DIR/testnet.lock while it creates and starts the network: a second `up` on DIR meanwhile
fails at once instead of starting the same nodes again. The kernel releases the lock when its holder
exits, however it exits, so the file left behind by a killed `up` blocks nothing.
`scripts/testnet` runs `up`, seeds demo data, prints where to look and stops everything on Ctrl-C. Each
node's log is DIR/<name>/node.log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ler import keys
from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer
from ler.files import write_durably
from ler.keys import KeyPair, write_key_file
from ler.record import RecordDocument, make_claims
from ler.tx import Action, GovVote, RecordAnchor, sign_tx
from node.client import ClientError, NodeClient
from node.config import (
    CONFIG_FILE,
    GENESIS_FILE,
    KEY_FILE,
    ConfigError,
    ConsensusTiming,
    PeerSpec,
    init_data_dir,
    known_settings,
    load_config,
)
from node.procs import PID_MAX, alive, node_running_on, runs_node

MANIFEST = "testnet.json"
#: Locked (fcntl.flock, exclusive) by `up` while it creates and starts the network. The file itself means
#: nothing: only the lock does, and the kernel drops it with its holder's process.
LOCK = "testnet.lock"
#: Written first by a network's creation, removed with its first manifest (saved before any node
#: starts): {"format": CREATING_FORMAT, "makes": [paths in DIR]}, every path the creation is about to
#: make, none of which existed (checked before it is written). A creation stopped between the two
#: (Ctrl-C) left only those, no node ever ran from them, and the next `up` removes them and makes the
#: network afresh. A marker of any other form is not one of these and nothing it names is removed.
CREATING = ".creating"
CREATING_FORMAT = "ler-testnet-creating/1"
_NODE_NAME = r"(authority|observer)[1-9][0-9]{0,3}"
#: What a node folder holds before its node first runs (init_data_dir's files, and their .tmp).
_UNRUN_NODE_FILES = {f + tmp for f in (CONFIG_FILE, GENESIS_FILE, KEY_FILE) for tmp in ("", ".tmp")}
DEMO_TYPE = "degree"
DEMO_ISSUER_NAME = "Demo University"


class TestnetError(Exception):
    pass


#: A network's shape when neither a flag nor a network file (configs/testnet.toml) says otherwise.
NETWORK_DEFAULTS: dict[str, Any] = {"chain_id": "ler-testnet", "authorities": 4, "observers": 0, "base_port": 8711}
_NETWORK_RANGES = {"authorities": (1, 64), "observers": (0, 64), "base_port": (1024, 65000)}


def load_network_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, float]]:
    """A network file such as configs/testnet.toml: its [network] settings (chain_id, authorities,
    observers, base_port; those it leaves out are absent) and its [consensus] settings for every node."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as exc:
        raise TestnetError(f"cannot read the network file {p}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TestnetError(f"{p}: {exc}") from None
    except RecursionError:
        raise TestnetError(f"{p}: arrays or tables nested too deeply") from None
    unknown = sorted(set(doc) - {"network", "consensus"})
    if unknown:
        raise TestnetError(f"{p}: unknown table [{unknown[0]}] (known: network, consensus)")
    network, consensus = doc.get("network", {}), doc.get("consensus", {})
    if not isinstance(network, dict) or not isinstance(consensus, dict):
        raise TestnetError(f"{p}: [network] and [consensus] must be tables")
    for key, value in network.items():
        if key not in NETWORK_DEFAULTS:
            raise TestnetError(f"{p}: unknown setting network.{key} (known: {', '.join(NETWORK_DEFAULTS)})")
        if key == "chain_id":
            if not isinstance(value, str):
                raise TestnetError(f"{p}: network.chain_id must be a string")
            continue
        low, high = _NETWORK_RANGES[key]
        if type(value) is not int or not low <= value <= high:
            raise TestnetError(f"{p}: network.{key} must be a whole number from {low} to {high}")
    try:
        timing = known_settings(consensus, ConsensusTiming, p)  # the checks a node's own config gets
    except ConfigError as exc:
        raise TestnetError(f"{exc} (in [consensus])") from None
    return dict(network), timing


def _free_ports(n: int, start: int) -> list[int]:
    import socket

    ports: list[int] = []
    p = start
    while len(ports) < n and p < 65000:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                ports.append(p)
            except OSError:
                pass
        p += 1
    return ports


def up(directory: str | os.PathLike[str], authorities: int = 4, observers: int = 0, base_port: int = 8711,
       chain_id: str = "ler-testnet", timeout: float = 60.0,
       consensus: dict[str, float] | None = None) -> dict[str, Any]:
    """Create (first time) and start the network; return the manifest.

    Nodes of an existing network that are running already (a node restarted by hand included) are left
    as they are; the others are started. `consensus` sets [consensus] timeouts in every node's config when
    the network is created (tests use short ones); a network that exists keeps its configs.
    """
    d = Path(directory).resolve()
    with _starting(d):
        return _up(d, authorities, observers, base_port, chain_id, timeout, consensus)


@contextlib.contextmanager
def _starting(d: Path) -> Iterator[None]:
    """Hold DIR's lock while `up` runs: two at once would each find the nodes stopped and start them both,
    the later processes would fail on the database the earlier ones hold, and testnet.json would list
    their dead pids. A lock held by the kernel, not a pid file: one left by an `up` that was killed is
    free again, and a pid cannot be taken by another process meanwhile."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise TestnetError(f"cannot lock {d / LOCK}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TestnetError(f"another `ler testnet up` is starting the network in {d} now (it holds "
                               f"{d / LOCK}); nothing was started: wait for it to end, then see "
                               f"`ler testnet status --dir {shlex.quote(str(d))}`") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _up(d: Path, authorities: int, observers: int, base_port: int, chain_id: str, timeout: float,
        consensus: dict[str, float] | None) -> dict[str, Any]:
    manifest_path = d / MANIFEST
    if manifest_path.exists():
        manifest = load(d)
    else:
        manifest = _create(d, authorities, observers, base_port, chain_id, consensus)
        save(d, manifest)  # the creation ends (CREATING goes) before any node runs from its folders
    started: dict[str, int] = {}
    try:
        for node in manifest["nodes"]:
            pid = _running_pid(node)
            if pid is None:
                pid = started[node["name"]] = _start_node(Path(node["data"]))
            node["pid"] = pid
        save(d, manifest)
        _wait_answering(manifest["nodes"], time.monotonic() + timeout, timeout)
    except TestnetError as exc:
        running = _undo_start(d, manifest, started)
        raise TestnetError(f"{exc}; stopped again what this command started ({', '.join(running) or 'nothing else'})"
                           ) from None
    except BaseException:  # interrupted (Ctrl-C): the same, then the interruption goes on
        _undo_start(d, manifest, started)
        raise
    return manifest


def _undo_start(d: Path, manifest: dict[str, Any], started: dict[str, int]) -> list[str]:
    """Half a network is no network: stop what `up` started, so that a script sees nothing of it running
    (nodes that ran before the call go on running). The names of those that were still running."""
    running = [name for name, pid in started.items() if alive(pid)]
    _stop(started)
    for node in manifest["nodes"]:
        if node["name"] in started:
            node["pid"] = None
    save(d, manifest)
    return running


def running(directory: str | os.PathLike[str]) -> list[str]:
    """Names of the network's nodes that are running now."""
    return [n["name"] for n in load(Path(directory).resolve())["nodes"] if _running_pid(n) is not None]


@dataclass(frozen=True, slots=True)
class NodesFound:
    """The nodes of the network in DIR: its manifest's, or those of its node folders when the manifest
    cannot be used (`without_manifest` then says why)."""

    nodes: list[dict[str, Any]]
    without_manifest: str | None = None


def find_nodes(directory: str | os.PathLike[str]) -> NodesFound:
    """The manifest's nodes; with testnet.json missing or unreadable, the node folders in DIR (the names
    `up` gives: authority1, observer1, ...), each as a manifest lists it but with no pid, so that only
    its node.pid can show it running. TestnetError (the manifest's) if DIR holds no node folder either."""
    d = Path(directory).resolve()
    try:
        return NodesFound(load(d)["nodes"])
    except TestnetError as exc:
        reason = str(exc)
        try:
            folders = [p for p in d.iterdir() if re.fullmatch(_NODE_NAME, p.name) and p.is_dir()
                       and not p.is_symlink()]
        except OSError:
            folders = []
        if not folders:
            raise
        if not (d / MANIFEST).exists():
            # Not `load`'s advice to run `up`, which refuses a folder holding a network's files
            # (`_refuse_leftovers`).
            where = shlex.quote(str(d))
            reason = (f"{d} has no {MANIFEST} (deleted?), which `ler testnet up` needs to use the network "
                      f"its node folders hold (it makes no new one over them): restore {MANIFEST}, or stop "
                      f"the nodes with `ler testnet down --dir {where}` and use an empty folder for a new "
                      "network")
    nodes = []
    for folder in sorted(folders, key=_node_order):
        try:
            url = load_config(folder).url
        except (ConfigError, OSError):
            url = "?"  # shown as such; a node that does not answer is reported so anyway
        nodes.append({"name": folder.name, "url": url, "role": folder.name.rstrip("0123456789"), "pid": None,
                      "data": str(folder), "key": ""})
    return NodesFound(nodes, reason)


def _node_order(folder: Path) -> tuple[int, int]:
    """Authorities before observers, each by number (authority2 before authority10), as `up` lists them."""
    role = folder.name.rstrip("0123456789")
    return (role != "authority", int(folder.name[len(role):]))


def _wait_answering(nodes: list[dict[str, Any]], deadline: float, timeout: float) -> None:
    for node in nodes:
        client = NodeClient(node["url"], timeout=2.0)
        while True:
            try:
                client.status()
                break
            except ClientError:
                if not alive(node["pid"]):
                    log = Path(node["data"]) / "node.log"
                    raise TestnetError(f"node {node['name']} exited ({_last_error(log)}); see {log}") from None
                if time.monotonic() > deadline:
                    raise TestnetError(f"node {node['name']} did not answer within {timeout:.0f} s") from None
                time.sleep(0.1)


def _last_error(log: Path) -> str:
    """The reason a node gave for stopping: its log's last "error:" line (`ler node run` writes one)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))  # the end is enough (a log can be long)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "no log"
    reason = next((line for line in reversed(lines) if line.startswith("error:")), None)
    if reason:
        return reason.removeprefix("error:").strip()
    last_start = max((i for i, line in enumerate(lines) if "event=node_started" in line), default=-1)
    if any("event=node_stopping" in line for line in lines[last_start + 1:]):
        # A clean stop with no error: a signal (`ler testnet down`, kill, Ctrl-C at its terminal).
        return "it was told to stop, by a signal such as `ler testnet down` sends, while this command waited for it"
    return "no reason in its log"


def _create(d: Path, authorities: int, observers: int, base_port: int, chain_id: str,
            consensus: dict[str, float] | None = None) -> dict[str, Any]:
    if authorities < 1 or observers < 0:
        raise TestnetError("a testnet needs at least one authority")
    names = [f"authority{i + 1}" for i in range(authorities)] + [f"observer{i + 1}" for i in range(observers)]
    if d.is_dir():
        _remove_half_made(d)
        _refuse_leftovers(d)
    d.mkdir(parents=True, exist_ok=True)
    makes = ["keys", *(f"keys/{n}.key" for n in [*names, "demo-issuer"]), "genesis.json", *names]
    write_durably(d / CREATING, (json.dumps({"format": CREATING_FORMAT, "makes": makes}) + "\n").encode(), 0o644)
    (d / "keys").mkdir()
    node_keys = {}
    for name in names:
        key = KeyPair.generate()
        write_key_file(d / "keys" / f"{name}.key", key)  # never over a key: none was there (checked)
        node_keys[name] = key
    issuer = KeyPair.generate()
    write_key_file(d / "keys" / "demo-issuer.key", issuer)
    genesis = Genesis(format=GENESIS_FORMAT, chain_id=chain_id, genesis_time=int(time.time() * 1000),
                      authorities=tuple(GenesisAuthority(node_keys[n].did, f"Demo Authority {i + 1}")
                                        for i, n in enumerate(names[:authorities])),
                      issuers=(GenesisIssuer(issuer.did, DEMO_ISSUER_NAME, (DEMO_TYPE,)),))
    genesis.save(d / "genesis.json")
    ports = _free_ports(len(names), base_port)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    nodes = []
    for i, name in enumerate(names):
        role = "authority" if i < authorities else "observer"
        peers = tuple(PeerSpec(u, node_keys[names[j]].did) for j, u in enumerate(urls) if j != i)
        init_data_dir(d / name, d / "genesis.json", d / "keys" / f"{name}.key", f"127.0.0.1:{ports[i]}",
                      role=role, peers=peers, consensus=consensus)
        nodes.append({"name": name, "url": urls[i], "role": role, "pid": None, "data": str(d / name),
                      "key": str(d / "keys" / f"{name}.key")})
    return {"chain_id": chain_id, "genesis": str(d / "genesis.json"), "nodes": nodes,
            "demo_issuer_key": str(d / "keys" / "demo-issuer.key"), "demo_record_type": DEMO_TYPE}


def _refuse_leftovers(d: Path) -> None:
    """A folder without a manifest that holds what a network leaves (its manifest lost or deleted) is
    never made over: its keys, genesis and chains would be overwritten or removed."""
    found = []
    for entry in sorted(d.iterdir()):
        if entry.name in ("keys", "genesis.json", "demo", CREATING) or re.fullmatch(_NODE_NAME, entry.name):
            found.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise TestnetError(f"{d} has no {MANIFEST} but holds a testnet's files ({shown}); nothing was changed: "
                           f"restore its {MANIFEST} to use that network, or choose an empty folder (or delete "
                           "this one) to make a new network")


def _remove_half_made(d: Path) -> None:
    """What a creation stopped before its manifest was written made (CREATING names it): no node has run
    from it, so nothing is lost, and leaving it would make every later `up` fail. Only a marker such as
    `_create` writes counts, and only if every path it names that exists is as a creation leaves it
    (a node folder no node ran from, not a link); else nothing is removed (`_refuse_leftovers` says why)."""
    try:
        marker = json.loads((d / CREATING).read_text())
    except (OSError, ValueError, RecursionError):
        return
    makes = marker.get("makes") if isinstance(marker, dict) and marker.get("format") == CREATING_FORMAT else None
    if not isinstance(makes, list):
        return
    nodes, files, folders = [], [], []
    for name in makes:
        # Only the names a creation gives: nothing else in DIR, nothing outside it.
        is_node = isinstance(name, str) and re.fullmatch(_NODE_NAME, name) is not None
        is_file = isinstance(name, str) and (
            name == "genesis.json" or re.fullmatch(rf"keys/({_NODE_NAME}|demo-issuer)\.key", name) is not None)
        if not (is_node or is_file or name == "keys"):
            continue
        path = d / name
        if path.is_symlink():
            return
        if not path.exists():
            continue
        if is_node:
            if not path.is_dir() or not {p.name for p in path.iterdir()} <= _UNRUN_NODE_FILES:
                return  # a node ran from it (its log, pid or chain), or it is not a node folder
            nodes.append(path)
        elif is_file:
            if not path.is_file():
                return
            files.append(path)
        else:
            if not path.is_dir():
                return
            folders.append(path)
    for folder in nodes:
        shutil.rmtree(folder)
    for file in files:
        file.unlink()
    for folder in folders:
        with contextlib.suppress(OSError):  # anything else put there stays (and `up` then says so)
            folder.rmdir()
    (d / CREATING).unlink()


def _start_node(data: Path) -> int:
    log = open(data / "node.log", "ab")  # handed to the child process, closed here after the fork
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "node", "run", "--data", str(data)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc.pid


def _running_pid(node: dict[str, Any]) -> int | None:
    """The process running this node now, or None: the one its data folder's node.pid names (a node
    restarted by hand with `ler node run --data` writes its own there), else the one `up` started."""
    data = Path(node["data"])
    pid = node_running_on(data)
    if pid is not None:
        return pid
    started = node.get("pid")
    return started if isinstance(started, int) and alive(started) and runs_node(started, data) else None


@dataclass(frozen=True, slots=True)
class Stopped:
    """What `down` stopped; `without_manifest` says why testnet.json was not used, when the nodes were
    found by their folders instead."""

    names: list[str]
    without_manifest: str | None = None


def down(directory: str | os.PathLike[str], grace: float = 10.0) -> Stopped:
    """Stop every running node of the network. Without a usable testnet.json, the nodes are those of
    DIR's node folders whose node.pid names a live `ler node run` of that folder: the network can still
    be stopped, and a process that took a dead node's pid is left alone. The manifest, missing or not
    readable, is then left as it is."""
    d = Path(directory).resolve()
    found = find_nodes(d)
    running_now = {node["name"]: pid for node in found.nodes if (pid := _running_pid(node)) is not None}
    _stop(running_now, grace)
    if found.without_manifest is None:
        manifest = load(d)
        for node in manifest["nodes"]:
            node["pid"] = None
        save(d, manifest)
    return Stopped(list(running_now), found.without_manifest)


def _stop(pids: dict[str, int], grace: float = 10.0) -> None:
    """SIGTERM each process (a node stops cleanly on it), then SIGKILL what is still there after `grace`."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids.values():
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def save(d: Path, manifest: dict[str, Any]) -> None:
    """Write DIR/testnet.json whole or not at all (beside it, then renamed): a command stopped while
    writing it leaves the manifest before or after, never a cut one that no later command could read."""
    try:
        write_durably(d / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)
        (d / CREATING).unlink(missing_ok=True)
    except OSError as exc:
        raise TestnetError(f"{d / MANIFEST} could not be written: {exc.strerror or exc}") from None


def load(d: Path) -> dict[str, Any]:
    """DIR/testnet.json, checked: TestnetError names the file and what is wrong with it."""
    path = d / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TestnetError(f"no testnet in {d} (no {MANIFEST}); `ler testnet up --dir {shlex.quote(str(d))}` "
                           "makes one") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not UTF-8, not JSON, too many digits
        raise TestnetError(f"{path} cannot be read as a testnet manifest: {exc}") from None
    fault = _manifest_fault(manifest)
    if fault:
        raise TestnetError(f"{path} is not a testnet manifest as `ler testnet up` writes it: {fault}")
    return manifest


def shape(manifest: dict[str, Any]) -> dict[str, int]:
    """How many authority and observer nodes the network of `manifest` has."""
    roles = [n["role"] for n in manifest["nodes"]]
    return {"authorities": roles.count("authority"), "observers": roles.count("observer")}


def _manifest_fault(m: object) -> str | None:
    if not isinstance(m, dict):
        return "not a JSON object"
    for k in ("chain_id", "genesis", "demo_issuer_key", "demo_record_type"):
        if not isinstance(m.get(k), str):
            return f"{k} is missing or not a string"
    nodes = m.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        return "nodes is missing or not a list of nodes"
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            return f"nodes[{i}] is not an object"
        for k in ("name", "url", "data", "key"):
            if not isinstance(n.get(k), str):
                return f"nodes[{i}].{k} is missing or not a string"
        if n.get("role") not in ("authority", "observer"):
            return f"nodes[{i}].role is not \"authority\" or \"observer\""
        pid = n.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= PID_MAX):
            return f"nodes[{i}].pid is not a process id or null"
    return None


def status(directory: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], str | None]:
    """A row for each node, and why testnet.json was not used if the nodes are DIR's node folders
    (see `find_nodes`)."""
    found = find_nodes(directory)
    out = []
    for node in found.nodes:
        pid = _running_pid(node)
        row: dict[str, Any] = {"name": node["name"], "url": node["url"], "role": _role(node, found),
                               "pid": pid, "running": pid is not None}
        try:
            s = NodeClient(node["url"], timeout=2.0).status()
            row.update(height=s["height"], mempool=s["mempool"]["txs"])
        except ClientError as exc:
            row["error"] = exc.reason
        out.append(row)
    return out, found.without_manifest


def _role(node: dict[str, Any], found: NodesFound) -> str:
    """The role a node runs as: its config.toml's, which its operator may have changed since `up` made it
    (an observer voted in and reconfigured as an authority); if that cannot be read, the manifest's, or
    "?" without one (a folder's name says only what `up` made it)."""
    try:
        return load_config(node["data"]).role
    except (ConfigError, OSError):
        return "?" if found.without_manifest is not None else str(node["role"])


def seed_demo(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Anchor two demo records (once), accrediting the demo issuer first by the authorities' votes if the
    network predates its accreditation in the genesis."""
    d = Path(directory).resolve()
    manifest = load(d)
    client = NodeClient(manifest["nodes"][0]["url"], timeout=30.0)
    chain = manifest["chain_id"]
    issuer = keys.read_key_file(manifest["demo_issuer_key"])
    if client.issuer_or_none(issuer.did) is None:
        action = Action(kind="accredit", subject=issuer.did, name=DEMO_ISSUER_NAME, scopes=(DEMO_TYPE,),
                        until=None)
        votes = []
        for node in manifest["nodes"]:
            if node["role"] == "authority":
                votes.append(sign_tx(keys.read_key_file(node["key"]), chain, GovVote(action=action)))
        _submit(client, votes[: len(votes) * 2 // 3 + 1])
    demo = d / "demo"
    demo.mkdir(exist_ok=True)
    made = []
    samples = [("holder-veteran", {"degree": "BSc", "field": "Logistics", "awarded": "2009"}),
               ("holder-programmer", {"degree": "MSc", "field": "Computer Science", "awarded": "2021"})]
    for name, claims in samples:
        out = demo / f"{name}.record.json"
        if out.exists():
            continue
        holder = KeyPair.generate()
        write_key_file(demo / f"{name}.key", holder, overwrite=True)
        doc = RecordDocument(chain_id=chain, record_id=os.urandom(16), issuer=issuer.did, holder=holder.did,
                             rtype=DEMO_TYPE, expires=None, claims=make_claims(claims))
        tx = sign_tx(issuer, chain, RecordAnchor(record=doc.record_id, issuer=issuer.did, holder=holder.did,
                                                 rtype=DEMO_TYPE, commitment=doc.commitment, expires=None))
        _submit(client, [tx])
        RecordDocument(**{**{f: getattr(doc, f) for f in doc.__slots__}, "anchor_tx": tx.tx_id}).save(out)
        made.append(str(out))
    return {"issuer": issuer.did, "records": made}


def _submit(client: NodeClient, txs: list[Any]) -> None:
    for r in client.submit(txs, wait=True, timeout=30):
        if r["status"] != "committed":
            raise TestnetError(f"demo transaction not committed: {r.get('error') or r['status']}")
