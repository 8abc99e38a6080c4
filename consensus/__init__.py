"""Agreement among authorities: the proof-of-authority BFT state machine (sans-IO).

`consensus.engine.Tendermint` is Tendermint's Algorithm 1 as a pure state machine; the driver feeds it
messages and timeouts and carries out the actions it returns. `consensus.messages` holds the Proposal
wire type and the SignedState a validator persists before it sends anything it signed.
"""

from consensus.engine import (
    Action,
    Broadcast,
    ConflictingProposals,
    Decide,
    Evidence,
    RecordSigned,
    Rejected,
    ScheduleTimeout,
    Tendermint,
    TimeoutConfig,
    proposer_of,
    quorum,
    skip_threshold,
)
from consensus.messages import Message, Proposal, SignedState, Value

__all__ = [
    "Action",
    "Broadcast",
    "ConflictingProposals",
    "Decide",
    "Evidence",
    "Message",
    "Proposal",
    "RecordSigned",
    "Rejected",
    "ScheduleTimeout",
    "SignedState",
    "Tendermint",
    "TimeoutConfig",
    "Value",
    "proposer_of",
    "quorum",
    "skip_threshold",
]
