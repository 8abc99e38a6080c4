"""LER Ledger's pure domain: encoding, identities, transactions, ledger rules, records and proofs.

Nothing here does I/O beyond reading and writing files the caller names; an issuer's tool or an
offline verifier needs only this package.
"""
