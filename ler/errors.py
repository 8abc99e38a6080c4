"""The domain layer's error types. Each carries its reason in words, fit to show a user."""

from __future__ import annotations


class LerError(Exception):
    """Base of every error the domain layer raises on purpose."""

    @property
    def reason(self) -> str:
        return str(self)


class DecodeError(LerError):
    """Bytes or JSON that are not a well-formed, canonical, known message."""


class SignatureError(LerError):
    """A signature that does not verify, or a key that is not usable."""


class KeyFileError(LerError):
    """A key file that cannot be read, decrypted or written."""


class RuleError(LerError):
    """A transaction that breaks a ledger rule. `rule` names the rule (as in docs/PROTOCOL.md)."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule


class ProofError(LerError):
    """A proof or bundle that does not check out."""
