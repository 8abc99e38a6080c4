"""Agreement among authorities: the proof-of-authority BFT state machine (sans-IO)."""
