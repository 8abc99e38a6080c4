"""The network side's pure parts, without processes: peer envelope decoding (every refusal a reason and a
4xx status), block-range decoding for sync, the [peers]/[consensus] configuration, and /metrics text.
The real multi-process network is tests/test_network.py.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from consensus import Proposal
from ler import codec
from ler.block import GENESIS_FORMAT, PREVOTE, Block, CommitCertificate, Genesis, GenesisAuthority, Vote
from ler.keys import KeyPair, read_key_file_did, write_key_file
from ler.tx import MAX_TX_BYTES
from node.config import (
    _AT_MOST,
    BlockTiming,
    ConfigError,
    ConsensusTiming,
    GossipSettings,
    Limits,
    PeerSpec,
    SyncSettings,
    init_data_dir,
    known_settings,
    load_config,
    parse_listen,
    parse_peer,
)
from node.metrics import Metrics
from node.peers import (
    PeerRefusal,
    decode_messages,
    parse_body,
    parse_envelope,
    parse_held,
    sign_envelope,
    verify_envelope,
)
from node.sync import SyncError, decode_range, progress
from storage.chain import ChainStore

CHAIN = "peer-test"


def body(**overrides: object) -> dict[str, object]:
    return {"boot": b"12345678", "seq": 1, "height": 3, "url": "http://127.0.0.1:8701", "proposals": [], "votes": [],
            "txs": [], **overrides}


def refused(fn: object, *args: object) -> PeerRefusal:
    with pytest.raises(PeerRefusal) as info:
        fn(*args)  # type: ignore[operator]
    assert 400 <= info.value.status < 500 and info.value.reason
    return info.value


def test_an_envelope_signature_binds_sender_chain_and_every_byte_of_the_body() -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    raw_body = codec.encode(body())
    sig = sign_envelope(key, CHAIN, raw_body)
    assert verify_envelope(key.public_key, CHAIN, raw_body, sig)
    assert not verify_envelope(other.public_key, CHAIN, raw_body, sig)
    assert not verify_envelope(key.public_key, CHAIN + "x", raw_body, sig)
    for i in range(len(raw_body)):  # any altered byte
        changed = raw_body[:i] + bytes([raw_body[i] ^ 0x01]) + raw_body[i + 1:]
        assert not verify_envelope(key.public_key, CHAIN, changed, sig)
    assert not verify_envelope(key.public_key, CHAIN, raw_body + b"\x00", sig)
    # A signature over the body itself (not its digest) is another statement, and refused.
    assert not verify_envelope(key.public_key, CHAIN, raw_body, key.sign_payload("peer", CHAIN, raw_body))


def test_a_well_formed_envelope_and_body_parse() -> None:
    key = KeyPair.generate()
    raw_body = codec.encode(body())
    sig = key.sign_payload("peer", CHAIN, raw_body)
    sender, got_body, got_sig = parse_envelope(codec.encode({"from": key.public_key, "body": raw_body, "sig": sig}))
    assert (sender, got_body, got_sig) == (key.public_key, raw_body, sig)
    assert parse_body(raw_body)["height"] == 3


@pytest.mark.parametrize("raw, words", [
    (b"\xc1", "malformed envelope"),
    (codec.encode([1, 2]), "exactly from, body and sig"),
    (codec.encode({"from": b"x", "body": b"", "sig": b"s" * 64}), "32-byte"),
    (codec.encode({"from": b"k" * 32, "body": "text", "sig": b"s" * 64}), "bytes"),
    (codec.encode({"from": b"k" * 32, "body": b"", "sig": b"s"}), "64-byte"),
    (codec.encode({"from": b"k" * 32, "body": b"", "sig": b"s" * 64, "extra": 1}), "exactly"),
    (b"\x83\xa4from\xc4\x20" + b"k" * 32 + b"\xa4body\xc4\x00\xa3sig\xc4\x40" + b"s" * 64, "malformed"),  # unsorted
])
def test_bad_envelopes_are_refused_with_a_reason(raw: bytes, words: str) -> None:
    assert words in refused(parse_envelope, raw).reason


@pytest.mark.parametrize("fields, words", [
    ({"boot": b"short"}, "boot"),
    ({"height": -1}, "height"),
    ({"height": True}, "height"),
    ({"seq": -1}, "seq"),
    ({"seq": "1"}, "seq"),
    ({"url": "file:///etc/passwd"}, "url"),
    ({"url": 7}, "url"),
    ({"votes": "x"}, "votes"),
    ({"txs": [1]}, "txs"),
    ({"txs": [b"x" * 70_000]}, "larger"),
    ({"surprise": 1}, "exactly"),
])
def test_bad_bodies_are_refused_with_a_reason(fields: dict[str, object], words: str) -> None:
    assert words in refused(parse_body, codec.encode(body(**fields))).reason


def held(**overrides: object) -> dict[str, object]:
    return {"height": 3, "proposals": [], "votes": [], "complete": True, **overrides}


def test_an_answer_of_what_a_peer_holds_parses_with_whether_it_is_complete() -> None:
    vote = Vote.make(KeyPair.generate(), CHAIN, PREVOTE, 4, 0, os.urandom(32)).encode()
    assert parse_held(codec.encode(held(votes=[vote]))) == (3, [], [vote], True)
    assert parse_held(codec.encode(held(complete=False)))[3] is False


@pytest.mark.parametrize("raw, words", [
    (b"\xc1", "malformed answer"),
    (b"[" * 50_000, "malformed answer"),
    (b"\x91" * 20_000 + b"\xc0", "malformed answer"),
    (b"\xdc" + b"\xff" * 1000, "malformed answer"),
    (codec.encode([1, 2]), "exactly height"),
    (codec.encode(held(surprise=1)), "exactly height"),
    (codec.encode({k: v for k, v in held().items() if k != "complete"}), "exactly height"),
    (codec.encode(held(height=-1)), "height"),
    (codec.encode(held(height=True)), "height"),
    (codec.encode(held(votes="x")), "votes"),
    (codec.encode(held(proposals=[1])), "proposals"),
    (codec.encode(held(complete=1)), "complete"),
    (b"\x84\xa5votes\x90\xa6height\x03\xa8complete\xc3\xa9proposals\x90", "malformed"),  # unsorted
])
def test_bad_answers_of_what_a_peer_holds_are_refused_with_a_reason(raw: bytes, words: str) -> None:
    assert words in refused(parse_held, raw).reason


def test_consensus_messages_decode_strictly() -> None:
    key = KeyPair.generate()
    vote = Vote.make(key, CHAIN, PREVOTE, 4, 0, os.urandom(32))
    [(got, raw, digest)] = decode_messages([], [vote.encode()])
    assert got == vote and raw == vote.encode() and len(digest) == 32
    assert "votes[0]" in refused(decode_messages, [], [b"junk"]).reason
    assert "proposals[0]" in refused(decode_messages, [codec.encode({"height": 1})], []).reason
    bad_round = codec.encode({**vote.to_obj(), "round": 2**40})
    assert "votes[0]" in refused(decode_messages, [], [bad_round]).reason


def test_a_proposal_travels_with_its_block(tmp_path: Path) -> None:
    authority = KeyPair.generate()
    genesis = Genesis(format=GENESIS_FORMAT, chain_id=CHAIN, genesis_time=1000,
                      authorities=(GenesisAuthority(authority.did, "A"),), issuers=())
    with ChainStore(tmp_path / "db", genesis) as store:
        block, _ = store.make_block([], 2000, 0, authority.public_key, None)
    proposal = Proposal.make(authority, CHAIN, 1, 0, -1, block)
    [(got, _, _)] = decode_messages([proposal.encode()], [])
    assert isinstance(got, Proposal) and got.value == block and got.signature_valid(CHAIN)


def test_block_ranges_decode_in_order_or_not_at_all(tmp_path: Path) -> None:
    authority = KeyPair.generate()
    genesis = Genesis(format=GENESIS_FORMAT, chain_id=CHAIN, genesis_time=1000,
                      authorities=(GenesisAuthority(authority.did, "A"),), issuers=())
    with ChainStore(tmp_path / "db", genesis) as store:
        block, _ = store.make_block([], 2000, 0, authority.public_key, None)
    cert = CommitCertificate(height=1, round=0, block=block.hash, sigs=())
    pair = [block.encode(), cert.encode()]
    [(b, c)] = decode_range(codec.encode([pair]), 1, 5)
    assert isinstance(b, Block) and b == block and c == cert
    for data, words in ((codec.encode([]), "non-empty"), (b"\xc1", "malformed"),
                        (codec.encode([[block.encode()]]), "pair"), (codec.encode([pair]), "expected 2")):
        with pytest.raises(SyncError, match=words):
            decode_range(data, 2 if words == "expected 2" else 1, 5)


# --- configuration ----------------------------------------------------------------------------------------

def make_folder(tmp_path: Path, **kw: object) -> Path:
    authority = KeyPair.generate()
    Genesis(format=GENESIS_FORMAT, chain_id=CHAIN, genesis_time=1000,
            authorities=(GenesisAuthority(authority.did, "A"),), issuers=()).save(tmp_path / "genesis.json")
    write_key_file(tmp_path / "node.key", authority)
    data = tmp_path / "node"
    init_data_dir(data, tmp_path / "genesis.json", tmp_path / "node.key", "127.0.0.1:8701", **kw)  # type: ignore[arg-type]
    return data


def test_peers_by_url_and_by_did_round_trip_through_config_toml(tmp_path: Path) -> None:
    other = KeyPair.generate()
    data = make_folder(tmp_path, peers=("http://127.0.0.1:8702/", f"http://127.0.0.1:8703#{other.did}",
                                        PeerSpec("http://127.0.0.1:8704", None)),
                       consensus={"propose": 0.5})
    cfg = load_config(data)
    assert cfg.peers == ("http://127.0.0.1:8702", "http://127.0.0.1:8704", "http://127.0.0.1:8703")
    assert PeerSpec("http://127.0.0.1:8703", other.did) in cfg.peer_nodes
    assert cfg.consensus.propose == 0.5 and cfg.consensus.prevote == 0.5 and cfg.consensus.max_drift_ms == 10_000
    assert cfg.gossip.relay_txs is False and cfg.sync.batch_blocks == 64


@pytest.mark.parametrize("text, words", [
    ("ftp://x", "http://HOST:PORT"),
    ('http://a"b:1', "character"),
    ("http://127.0.0.1:1#did:key:nonsense", "peer"),
    ("http://127.0.0.1:99999", "a port from 1 to 65535"),
    ("http://127.0.0.1:0", "a port from 1 to 65535"),
    ("http://[::1", "a port from 1 to 65535"),
])
def test_bad_peers_are_refused(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_peer(text)


@pytest.mark.parametrize("extra, words", [
    ("[consensus]\nproposee = 1\n", "unknown setting"),
    ("[consensus]\npropose = -1\n", "negative"),
    ("[gossip]\nrelay_txs = 1\n", "relay_txs must be true or false"),
    ("[sync]\nbatch_blocks = true\n", "batch_blocks must be a whole number"),
    ('[peers]\nurls = ["http://x:1"]\nfoo = 1\n', "peers.foo"),
    ('[[peers.nodes]]\nurl = "http://x:1"\n', "exactly url and did"),
    # 0 would make the node spin at full CPU (resend_s, poll_s) or stop it working
    ("[gossip]\nresend_s = 0\n", "resend_s must be more than 0"),
    ("[gossip]\ntimeout_s = 0.0\n", "timeout_s must be more than 0"),
    ("[sync]\npoll_s = 0\n", "poll_s must be more than 0"),
    ("[sync]\nbatch_blocks = 0\n", "batch_blocks must be more than 0"),
    ("[consensus]\npropose = 0\n", "propose must be more than 0"),
    ("[limits]\nblock_txs = 0\n", "block_txs must be more than 0"),
    ("[limits]\nmax_body_bytes = 0\n", "max_body_bytes must be more than 0"),
    # a pool that cannot hold one transaction refuses every submission as "full" for ever
    ("[limits]\nmempool_bytes = 1\n", r"mempool_bytes must be at least 4,096 \(the largest transaction"),
    ("[limits]\nmempool_bytes = 4095\n", "mempool_bytes must be at least 4,096"),
    ("[gossip]\nresend_s = inf\n", "resend_s must be a finite number"),  # TOML has inf and nan
    ("[consensus]\npropose = nan\n", "propose must be a finite number"),
    # A misspelt table or key outside the settings tables: refused, not ignored in silence.
    ("[consesus]\npropose = 1.0\n", "unknown table or setting 'consesus'"),
    ("[gossip.extra]\n", "unknown setting 'extra'"),
])
def test_bad_network_settings_are_refused(tmp_path: Path, extra: str, words: str) -> None:
    data = make_folder(tmp_path)
    cfg = data / "config.toml"
    text = cfg.read_text()
    for table in ("[limits]\n", "[consensus]\n", "[gossip]\n", "[sync]\n", "[peers]\nurls = []\n"):
        text = text.replace(table, "")
    cfg.write_text(text + extra)
    with pytest.raises(ConfigError, match=words):
        load_config(data)


def test_the_smallest_mempool_that_holds_the_largest_transaction_is_taken(tmp_path: Path) -> None:
    data = make_folder(tmp_path)
    cfg = data / "config.toml"
    cfg.write_text(cfg.read_text().replace("[limits]\n", "[limits]\nmempool_bytes = 4096\n", 1))
    assert load_config(data).limits.mempool_bytes == MAX_TX_BYTES == 4096


@pytest.mark.parametrize("listen, words", [
    ("bad host:80", r"\[node\] listen 'bad host:80': the host 'bad host' is neither an IP address nor a host"),
    ("999.1.1.1:9310", r"\[node\] listen '999.1.1.1:9310': the host '999.1.1.1' is not an IPv4 address"),
    ("1.2.3:9310", "the host '1.2.3' is not an IPv4 address"),
    ("-node:9310", "the host '-node' is neither"),
    ("host!name:9310", "the host 'host!name' is neither"),
    ("[nonsense]:9310", r"the host 'nonsense' is not an IPv6 address"),
    ("[::1]", r"\[node\] listen '\[::1\]' must be HOST:PORT or \[IPv6 address\]:PORT"),
    ("[::1:9310", "must be HOST:PORT or"),
    (":::9310x", "the port '9310x' is not a number"),
    ("nonsense", r"\[node\] listen 'nonsense' must be HOST:PORT"),
    ("localhost:0", "the port 0 is out of range"),
])
def test_a_listen_address_that_can_never_be_bound_is_refused_naming_setting_and_value(
        tmp_path: Path, listen: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_listen(listen)
    data = make_folder(tmp_path)
    cfg = data / "config.toml"
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:8701"', f'listen = "{listen}"', 1))
    with pytest.raises(ConfigError, match=words) as err:
        load_config(data)
    assert err.value.reason.startswith(f"{cfg}: [node] listen {listen!r}"), err.value.reason


@pytest.mark.parametrize("listen, host, port, url", [
    ("[::1]:9310", "::1", 9310, "http://[::1]:9310"),
    ("::1:9310", "::1", 9310, "http://[::1]:9310"),  # the form accepted before brackets were
    ("[::]:80", "::", 80, "http://[::]:80"),
    ("0.0.0.0:8701", "0.0.0.0", 8701, "http://0.0.0.0:8701"),
    ("localhost:8701", "localhost", 8701, "http://localhost:8701"),
    ("node-1.example.org:8701", "node-1.example.org", 8701, "http://node-1.example.org:8701"),
    ("ledger_node:8701", "ledger_node", 8701, "http://ledger_node:8701"),  # a container's service name
])
def test_listen_takes_ip_addresses_bracketed_ipv6_and_host_names(tmp_path: Path, listen: str, host: str,
                                                                  port: int, url: str) -> None:
    assert parse_listen(listen) == (host, port)
    authority = KeyPair.generate()
    Genesis(format=GENESIS_FORMAT, chain_id=CHAIN, genesis_time=1000,
            authorities=(GenesisAuthority(authority.did, "A"),), issuers=()).save(tmp_path / "genesis.json")
    write_key_file(tmp_path / "node.key", authority)
    cfg = init_data_dir(tmp_path / "node", tmp_path / "genesis.json", tmp_path / "node.key", listen)
    assert (cfg.host, cfg.port, cfg.url) == (host, port, url)
    assert load_config(tmp_path / "node").url == url  # written back in a form that reads the same


def test_a_config_file_that_is_not_utf8_is_named_with_the_byte(tmp_path: Path) -> None:
    data = make_folder(tmp_path)
    cfg = data / "config.toml"
    raw = cfg.read_bytes()
    cfg.write_bytes(raw.replace(b'role = "authority"', b'role = "authority" # caf\xe9', 1))
    offset = raw.index(b'role = "authority"') + len(b'role = "authority" # caf')
    with pytest.raises(ConfigError, match=rf"^{cfg} is not UTF-8 text \(byte 0xe9 at offset {offset}, line 3\)"):
        load_config(data)


SETTING_TABLES = [Limits, BlockTiming, ConsensusTiming, GossipSettings, SyncSettings]


@pytest.mark.parametrize("cls", SETTING_TABLES, ids=lambda c: c.__name__)
def test_every_number_setting_has_a_bound_that_is_said_when_passed(cls: type) -> None:
    numbers = [f for f in dataclasses.fields(cls) if not isinstance(f.default, bool)]
    assert numbers
    for f in numbers:
        most = _AT_MOST[cls][f.name]  # a KeyError here: a setting added without a bound
        assert known_settings({f.name: most}, cls, Path("c.toml")) == {f.name: most}
        over = most + 1 if isinstance(f.default, int) else most * 1.001
        with pytest.raises(ConfigError, match=rf"c.toml: {f.name} must be at most {most:,}\b"):
            known_settings({f.name: over}, cls, Path("c.toml"))


def test_a_timeout_written_in_milliseconds_where_seconds_are_meant_is_refused(tmp_path: Path) -> None:
    data = make_folder(tmp_path)
    cfg = data / "config.toml"
    cfg.write_text(cfg.read_text().replace("[consensus]\n", "[consensus]\npropose = 3000\n", 1))
    with pytest.raises(ConfigError, match=r"propose must be at most 600 \(seconds\); it is 3,000"):
        load_config(data)


@pytest.mark.parametrize("edit, words", [
    (lambda t: "relay = true\n" + t, "unknown table or setting 'relay'"),
    (lambda t: t.replace('role = "authority"', 'rol = "observer"'), "unknown setting node.rol"),
])
def test_misspelt_names_outside_the_tables_are_refused(tmp_path: Path, edit: Callable[[str], str],
                                                       words: str) -> None:
    data = make_folder(tmp_path)
    cfg = data / "config.toml"
    cfg.write_text(edit(cfg.read_text()))
    with pytest.raises(ConfigError, match=words):
        load_config(data)


def test_an_interrupted_init_can_be_run_again(tmp_path: Path) -> None:
    """`ler node init` stopped before its last step (config.toml): the same command again finishes it;
    with another key it refuses, since the folder's node.key is not the one given."""
    data = make_folder(tmp_path)
    (data / "config.toml").unlink()  # as if killed before writing it
    with pytest.raises(ConfigError, match="not a node data folder"):
        load_config(data)
    config = init_data_dir(data, tmp_path / "genesis.json", tmp_path / "node.key", "127.0.0.1:8701")
    assert config.load_key(None).did == read_key_file_did(tmp_path / "node.key")
    with pytest.raises(ConfigError, match="already initialised"):
        init_data_dir(data, tmp_path / "genesis.json", tmp_path / "node.key", "127.0.0.1:8701")
    (data / "config.toml").unlink()
    write_key_file(tmp_path / "other.key", KeyPair.generate())
    with pytest.raises(ConfigError, match="holds another key"):
        init_data_dir(data, tmp_path / "genesis.json", tmp_path / "other.key", "127.0.0.1:8701")
    assert not (data / "config.toml").exists()
    assert not list(data.glob("*.tmp"))


def test_a_data_folder_that_cannot_be_read_gets_a_config_error(tmp_path: Path) -> None:
    """Not an unexpected failure of the OS's kind: a file given as the folder, a folder as config.toml."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        load_config(tmp_path / "notes.txt")
    (tmp_path / "odd" / "config.toml").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"config\.toml cannot be read: Is a directory"):
        load_config(tmp_path / "odd")


def test_metrics_render_in_prometheus_text_format() -> None:
    m = Metrics()
    m.blocks_committed = 3
    m.commit_latency.observe(0.02)
    m.commit_latency.observe(4.0)
    m.gauges = lambda: {"ler_height": ("Last committed height", 3)}
    text = m.render()
    lines = text.splitlines()
    assert "# TYPE ler_height gauge" in lines and "ler_height 3" in lines
    assert "ler_blocks_committed_total 3" in lines
    assert 'ler_commit_latency_seconds_bucket{le="0.025"} 1' in lines
    assert 'ler_commit_latency_seconds_bucket{le="+Inf"} 2' in lines
    assert "ler_commit_latency_seconds_count 2" in lines
    assert text.endswith("\n")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        assert f"process_max_fds {soft}" in lines
    if Path("/proc/self/fd").is_dir():
        [open_now] = [int(line.split()[1]) for line in lines if line.startswith("process_open_fds ")]
        assert 3 <= open_now <= len(list(Path("/proc/self/fd").iterdir())) + 2


def test_sync_progress_says_how_far_how_fast_and_how_long() -> None:
    assert progress(0, 0, 1000, 0.0) == "height=0 target=1000 done_pct=0.0 blocks_per_s=0.0 eta_s=-"
    assert progress(200, 450, 1200, 2.0) == "height=450 target=1200 done_pct=25.0 blocks_per_s=125.0 eta_s=6"
    assert progress(500, 1000, 1000, 4.0).endswith("done_pct=100.0 blocks_per_s=125.0 eta_s=0")
    # A peer's best height below ours (it is behind too): nothing left, never past 100%.
    assert progress(10, 12, 5, 1.0) == "height=12 target=5 done_pct=100.0 blocks_per_s=2.0 eta_s=0"


def test_the_height_a_hold_starts_from_is_one_no_f_peers_can_raise() -> None:
    from node.validator import reached_by_many

    assert reached_by_many([7, 9, 8], 1) == 8  # one of three may lie: its 10**18 would not count
    assert reached_by_many([10**18, 9, 8], 1) == 9
    assert reached_by_many([10**18, 10**18, 8, 9], 1) == 10**18  # two agree: more than f
    assert reached_by_many([5], 0) == 5 and reached_by_many([], 0) == 0
    assert reached_by_many([5], 1) == 0  # fewer reports than f + 1: none to go by
