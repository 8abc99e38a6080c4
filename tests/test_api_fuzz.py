"""Fuzzing the HTTP API of a real node from its own OpenAPI document (schemathesis).

Schemathesis generates requests from /v1/openapi.json (valid ones, and ones that break the document's
schemas), sends them to a node process over real HTTP, and checks every answer: never a 5xx, a status
and content type the document lists, a body of the listed schema, a 405 with an Allow header for an
undeclared method, invalid input refused. One check is left out: "positive data acceptance" would
have every request the schemas admit accepted, while the node also applies rules no schema states (a
did:key's digits must spell an Ed25519 key, a disclosure's claims must be sorted and at most 256 in
all, exactly one of ?issuer and ?holder); those refusals are 400s with a reason, which the other
checks hold to the document. A fixed seed keeps the run the same from one time to the next.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_proc import NodeProc, init_node, make_chain

from ler.record import RecordDocument, make_claims
from ler.tx import RecordAnchor, sign_tx

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    chain = make_chain(tmp_path_factory.mktemp("fuzz"), chain_id="fuzz-test")
    proc = NodeProc(init_node(chain, chain.root / "node")).start()
    # Something on the ledger, so that reads of blocks, records and issuers find data as well as none.
    txs = []
    for i in range(3):
        doc = RecordDocument(chain_id=chain.chain_id, record_id=bytes([i]) * 16, issuer=chain.issuer.did,
                             holder=chain.authority.did, rtype="degree", expires=None,
                             claims=make_claims({"degree": "BSc", "year": 2009 + i}))
        txs.append(sign_tx(chain.issuer, chain.chain_id, RecordAnchor(
            record=doc.record_id, issuer=doc.issuer, holder=doc.holder, rtype="degree",
            commitment=doc.commitment, expires=None)))
    proc.commit(txs)
    yield proc
    assert proc.terminate() == 0, proc.log()


def test_the_api_holds_to_its_openapi_document_under_fuzzing(node: NodeProc, tmp_path: Path) -> None:
    proc = node
    # A request over a documented limit (more than 10,000 transactions, say) is refused as 413 Content
    # Too Large, which the document lists; the negative-data check's own list of refusals lacks it.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.negative_data_rejection]\nexpected-statuses = '
                      '["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]\n')
    out = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(config), "run", proc.url + "/v1/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "40", "--seed", "20261202",
         "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
        env={"PATH": str(SCHEMATHESIS.parent), "HOME": str(tmp_path), "SCHEMATHESIS_HOOKS": ""})
    failures = out.stdout[out.stdout.find("= FAILURES ="):][:8000]  # each failure with a curl to repeat it
    assert out.returncode == 0, failures + out.stderr[-2000:]
    ran = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert ran and int(ran[1]) == int(ran[2]) >= 500, out.stdout[-2000:]  # hundreds of requests, all passing
    assert proc.get("/health").status == 200  # and the node still serves
    log = proc.log(tail=None)
    assert "event=internal_error" not in log and "Traceback" not in log, log[-3000:]
