"""Peers configured wrongly: what the operator reads in the log, and that it names the real mistake.

Real node processes on 127.0.0.1 (tests/node_proc.py): an authority of a one-authority chain and an
observer of the same chain, each listing the other in [peers], one of them with a mistake in it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_proc import LER, Chain, NodeProc, free_port, make_chain, wait_until

from ler.keys import KeyPair, write_key_file
from ler.tx import Action, GovVote, sign_tx
from node.config import PeerSpec, init_data_dir

pytestmark = pytest.mark.slow


def set_gossip(data: Path, **values: float) -> None:
    """Write [gossip] settings into a node's config.toml."""
    cfg = data / "config.toml"
    text = cfg.read_text()
    assert "[gossip]\n" in text
    lines = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    cfg.write_text(text.replace("[gossip]\n", f"[gossip]\n{lines}", 1))


def observer_folder(chain: Chain, root: Path, name: str, peers: tuple[PeerSpec, ...]) -> tuple[Path, KeyPair]:
    key = KeyPair.generate()
    write_key_file(root / f"{name}.key", key)
    data = root / name
    init_data_dir(data, chain.genesis_path, root / f"{name}.key", f"127.0.0.1:{free_port()}", role="observer",
                  peers=peers)
    return data, key


def lines_with(node: NodeProc, words: str) -> list[str]:
    return [line for line in node.log(tail=None).splitlines() if words in line]


def refused_count(node: NodeProc) -> int:
    """Peer envelopes the node refused since it started (its /metrics)."""
    for line in node.get("/metrics").body.decode().splitlines():
        if line.startswith("ler_peer_messages_refused_total "):
            return int(float(line.split()[1]))
    raise AssertionError("ler_peer_messages_refused_total is not in /metrics")


@pytest.fixture
def procs() -> Iterator[list[NodeProc]]:
    """Nodes a test starts, stopped at its end whatever happened."""
    started: list[NodeProc] = []
    yield started
    for node in started:
        node.close()


def test_a_peer_heard_from_at_a_mistyped_url_is_named_once_without_flapping(tmp_path: Path,
                                                                            procs: list[NodeProc]) -> None:
    """The authority lists the observer under the right did but a URL nothing listens at. The observer's
    envelopes arrive all along: that must not make the link "up" (every send to the URL fails), so no
    peer_up / peer_down lines at each envelope and no connected peer in /health or /metrics; after its
    back-offs one WARNING says the peer is heard from but the configured URL reaches nothing."""
    chain = make_chain(tmp_path, chain_id="mistyped-url")
    authority_port = free_port()
    observer_data, observer_key = observer_folder(
        chain, tmp_path, "observer", (PeerSpec(f"http://127.0.0.1:{authority_port}", chain.authority.did),))
    set_gossip(observer_data, resend_s=0.05)  # a hello to the authority every 0.2 s
    mistyped = f"http://127.0.0.1:{free_port()}"
    data = tmp_path / "authority"
    init_data_dir(data, chain.genesis_path, chain.authority_key_path, f"127.0.0.1:{authority_port}",
                  peers=(PeerSpec(mistyped, observer_key.did),))
    set_gossip(data, backoff_max_s=0.3)  # named after 6 x 0.3 s
    authority = NodeProc(data)
    procs.append(authority.start())
    observer = NodeProc(observer_data)
    procs.append(observer.start())
    wait_until(lambda: lines_with(authority, "event=peer_unreachable"), 30, "the mistyped peer to be named")
    connected = []
    for _ in range(10):  # more envelopes arrive meanwhile
        connected.append(authority.get_json("/health")["peers"])
        time.sleep(0.1)
    metrics = authority.get("/metrics").body.decode().splitlines()
    assert "ler_peers_connected 0" in metrics and connected == [0] * 10, connected
    assert observer.get_json("/health")["peers"] == 1  # the other way round, the URL is right
    warned = [line for line in lines_with(authority, "event=peer_unreachable") if "level=WARNING" in line]
    assert len(warned) == 1 and f"url={mistyped} " in warned[0] and "heard=True" in warned[0], warned
    assert "the peer is heard from" in warned[0] and observer.url in warned[0], warned[0]
    assert not lines_with(authority, "event=peer_up") and not lines_with(authority, "event=peer_down")


@pytest.mark.parametrize("wrong", ["another node's", "nobody's"])
def test_a_peer_url_listed_under_the_wrong_did_is_named_as_such(tmp_path: Path, procs: list[NodeProc],
                                                                 wrong: str) -> None:
    """[peers] gives observer B's URL the did of observer C (a line copied and half edited), or of no node.
    The node at that URL takes the authority's envelopes and C's own envelopes arrive from C's URL: the
    authority must say that the URL answers as B, not that two processes send as C (peer_key_shared,
    which would send the operator looking for a copied data folder)."""
    chain = make_chain(tmp_path, chain_id="wrong-did")
    authority_url = f"http://127.0.0.1:{free_port()}"
    to_authority = (PeerSpec(authority_url, chain.authority.did),)
    b_data, b_key = observer_folder(chain, tmp_path, "b", to_authority)
    c_data, c_key = observer_folder(chain, tmp_path, "c", to_authority)
    set_gossip(c_data, resend_s=0.05)  # C says hello to the authority every 0.2 s
    b, c = NodeProc(b_data), NodeProc(c_data)
    named = c_key.did if wrong == "another node's" else KeyPair.generate().did
    data = tmp_path / "authority"
    init_data_dir(data, chain.genesis_path, chain.authority_key_path, authority_url.removeprefix("http://"),
                  peers=(PeerSpec(b.url, named), PeerSpec(c.url, c_key.did)))
    set_gossip(data, resend_s=0.05)  # and to each peer (B among them) as often
    authority = NodeProc(data)
    procs.extend([authority.start(), b.start(), c.start()])
    said = wait_until(lambda: lines_with(authority, "event=peer_key_mismatch"), 30, "the wrong did to be named")
    time.sleep(3)  # many envelopes and replies more: still one warning, and no other explanation
    assert said == lines_with(authority, "event=peer_key_mismatch") and "level=WARNING" in said[0], said
    assert f"url={b.url} configured={named} answers={b_key.did} our_envelopes=taken" in said[0], said
    assert "correct the peer's did in [peers]" in said[0]
    assert not lines_with(authority, "event=peer_key_shared")
    assert not lines_with(authority, "event=peer_restarted")
    assert authority.get_json("/health")["peers"] == 2


def test_a_peer_that_refuses_our_envelopes_is_named_once_not_at_every_hello(tmp_path: Path,
                                                                          procs: list[NodeProc]) -> None:
    """An observer the authority does not list (it knows the observer's URL only, and sends to it): the
    authority refuses every envelope of the observer's (403), a hello every 0.2 s here. The observer says
    so in one WARNING, not at each hello it hears back or after each restart of the authority."""
    chain = make_chain(tmp_path, chain_id="refused")
    authority_url = f"http://127.0.0.1:{free_port()}"
    observer_data, _ = observer_folder(chain, tmp_path, "observer", (PeerSpec(authority_url, chain.authority.did),))
    set_gossip(observer_data, resend_s=0.05, backoff_max_s=0.2)  # it tries again while the authority is down
    observer = NodeProc(observer_data)
    data = tmp_path / "authority"
    init_data_dir(data, chain.genesis_path, chain.authority_key_path, authority_url.removeprefix("http://"),
                  peers=(PeerSpec(observer.url, None),))  # by URL: its key is no known sender
    set_gossip(data, resend_s=0.05)
    authority = NodeProc(data)
    procs.extend([authority.start(), observer.start()])

    def refusing() -> bool:
        return refused_count(authority) >= 5

    # Refused for longer than six of its longest back-offs: the authority answers, so it is not
    # "unreachable" (whose hint would send the operator to check a URL that is right).
    wait_until(refusing, 30, "the authority to refuse the observer's envelopes")
    time.sleep(2)
    unreachable = [line for line in lines_with(observer, "event=peer_unreachable") if "level=WARNING" in line]
    assert not unreachable, unreachable
    for _ in range(2):  # the refusals start again after each restart
        wait_until(refusing, 30, "the authority to refuse the observer's envelopes")
        assert authority.terminate() == 0
        authority.start()
    wait_until(refusing, 30, "the authority to refuse the observer's envelopes")
    warned = [line for line in lines_with(observer, "event=peer_refused_us") if "level=WARNING" in line]
    assert len(warned) == 1 and f"url={authority_url} status=403 refused=1 " in warned[0], warned
    assert "is not a known peer of this node" in warned[0]
    assert lines_with(observer, "event=peer_public_only")


def test_an_observer_voted_in_as_an_authority_says_it_does_not_vote(tmp_path: Path, procs: list[NodeProc]) -> None:
    """Governance makes an observer node's key an authority. The node, run as an observer, signs nothing
    (it never recorded what it signed, as a validator must); it must say so once, naming the height from
    which its vote is counted, and show it in /health, instead of leaving the network short of a vote in
    silence: that first height, also long after it and after restarts."""
    chain = make_chain(tmp_path, chain_id="voted-in")
    authority_url = f"http://127.0.0.1:{free_port()}"
    observer_data, observer_key = observer_folder(chain, tmp_path, "observer",
                                                  (PeerSpec(authority_url, chain.authority.did),))
    observer = NodeProc(observer_data)
    data = tmp_path / "authority"
    init_data_dir(data, chain.genesis_path, chain.authority_key_path, authority_url.removeprefix("http://"),
                  peers=(PeerSpec(observer.url, observer_key.did),))
    authority = NodeProc(data)
    procs.extend([authority.start(), observer.start()])
    assert observer.get_json("/health")["warnings"] == []
    add = Action(kind="add_authority", subject=observer_key.did, name="Second Body", scopes=(), until=None)
    [result] = authority.commit([sign_tx(chain.authority, chain.chain_id, GovVote(action=add))])
    effective = int(result["height"]) + 2  # a validator-set change committed at h applies from h + 2
    said = wait_until(lambda: lines_with(observer, "event=voted_in_but_observer"), 30,
                      "the observer to say it does not vote")
    assert len(said) == 1 and "level=WARNING" in said[0], said
    assert f"node={observer_key.did} height={effective} " in said[0] and 'set role = "authority"' in said[0]
    health = observer.get_json("/health")
    assert health["ok"] is True and health["role"] == "observer" and health["status"] == "degraded"
    assert [(w["event"], w["height"]) for w in health["warnings"]] == [("voted_in_but_observer", effective)]
    assert authority.get_json("/health")["warnings"] == []
    shown = subprocess.run([str(LER), "status", "--node", observer.url], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and f"degraded:     {health['warnings'][0]['reason']} (height {effective})" \
        in shown.stdout.splitlines(), shown.stdout
    assert "degraded:" not in subprocess.run([str(LER), "status", "--node", authority.url], capture_output=True,
                                             text=True, timeout=30).stdout
    # Restarted as it was, it says so again at its start.
    assert observer.terminate() == 0
    observer.log_path.write_text("")
    observer.start()
    wait_until(lambda: lines_with(observer, "event=voted_in_but_observer"), 30, "the restarted observer to say so")
    # Run as an authority for a few blocks past that height, then as an observer again: from a later
    # height and after a restart, it still names the height its key became an authority's, not the next.
    config = observer_data / "config.toml"
    config.write_text(config.read_text().replace('role = "observer"', 'role = "authority"', 1))
    assert observer.terminate() == 0
    observer.log_path.write_text("")
    observer.start()
    for n in range(4):
        accredit = Action(kind="accredit", subject=KeyPair.generate().did, name=f"School {n}", scopes=("degree",),
                          until=None)
        authority.commit([sign_tx(chain.authority, chain.chain_id, GovVote(action=accredit))])
    later = authority.height()
    assert later >= effective + 2 and not lines_with(observer, "event=voted_in_but_observer")
    wait_until(lambda: observer.height() >= later, 30, "the observer's key to commit with the authority's")
    config.write_text(config.read_text().replace('role = "authority"', 'role = "observer"', 1))
    assert observer.terminate() == 0
    observer.log_path.write_text("")
    observer.start()
    assert observer.height() == later
    [again] = wait_until(lambda: lines_with(observer, "event=voted_in_but_observer"), 30,
                         "the observer, run as one again, to say so")
    assert f"node={observer_key.did} height={effective} " in again and f"from height {effective}," in again
    health = observer.get_json("/health")
    assert [(w["event"], w["height"]) for w in health["warnings"]] == [("voted_in_but_observer", effective)]
