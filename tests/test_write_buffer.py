"""Each node's LevelDB write buffer: staggered across the authorities, and really the one in use."""

from __future__ import annotations

from pathlib import Path

from ler.keys import KeyPair
from storage.chain import ChainStore, write_buffer_mb_for
from tests.helpers_chain import ChainBuilder, make_genesis, new_record


def test_authorities_flush_their_databases_at_different_heights() -> None:
    """Nodes storing the same blocks get write buffers spread over 24 to 48 MB by their place among the
    authorities (one size each, for up to 24 of them), so their databases do not flush and compact
    together; any other node gets one by its key, in the same range, the same at every start."""
    for n in (1, 4, 7, 24):  # (more authorities than 24 share sizes)
        members = [KeyPair.generate().public_key for _ in range(n)]
        sizes = sorted(write_buffer_mb_for(k, members) for k in members)
        assert len(set(sizes)) == n and sizes[0] == 24 and sizes[-1] < 48
    observer = KeyPair.generate().public_key
    assert 24 <= write_buffer_mb_for(observer, members) < 48
    assert write_buffer_mb_for(observer, members) == write_buffer_mb_for(observer, list(reversed(members)))


def test_the_write_buffer_given_is_the_one_the_database_uses(tmp_path: Path) -> None:
    """A 1 MB buffer flushes tables to disk after a few hundred records; the usual one does not yet.
    Reopened with another size, the store reads all of it back."""
    auths, uni = [KeyPair.generate()], KeyPair.generate()
    genesis = make_genesis(auths, [(uni, ("degree",))])
    records = []
    for name, mb in (("small", 1), ("usual", 32)):
        builder = ChainBuilder(tmp_path / name, genesis, auths, write_buffer_mb=mb)
        for _ in range(6):
            batch = [new_record(uni, KeyPair.generate().did) for _ in range(200)]
            if name == "small":
                records.extend(doc.record_id for doc, _ in batch)
            builder.commit([tx for _, tx in batch])
        builder.close()
        flushed = "Level-0 table" in (tmp_path / name / "LOG").read_text()
        assert flushed == (mb == 1), name
    reopened = ChainStore(tmp_path / "small", genesis, write_buffer_mb=48)
    assert len(records) == 1200 and all(reopened.get_record(r) is not None for r in records)
    reopened.close()
