"""Exceptions raised by the secure-aggregation protocol.

Every failure the protocol can detect is a :class:`SecAggError`, so a caller (the Flower
workflow or client mod) can abort a round with one ``except`` clause. The subclasses say *what*
went wrong, which is what an operator needs in a log line:

* :class:`MalformedMessageError` - a message failed parsing or validation (truncated, wrong
  length, unknown or duplicated node id, wrong vector length, wrong round id, ...).
* :class:`SignatureVerificationError` - an advertised public key is not signed by the identity
  key registered for that node (e.g. a server substituted a key): the client aborts.
* :class:`DecryptionError` - an encrypted share failed authentication (AES-GCM tag).
* :class:`InsufficientParticipantsError` - fewer than ``t`` participants survive a stage, so the
  secret shares cannot be reconstructed (Bonawitz et al. 2017, threshold ``t``).
* :class:`ProtocolStateError` - a stage method was called out of order.
* :class:`ReconstructionError` - Shamir reconstruction produced an inconsistent secret.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error raised by :mod:`fedssl.privacy.secagg`."""


class MalformedMessageError(SecAggError, ValueError):
    """A protocol message is malformed or inconsistent with the round's state."""


class SignatureVerificationError(SecAggError):
    """A public key's Ed25519 signature does not verify against the registered identity."""


class DecryptionError(SecAggError):
    """An encrypted Shamir share failed AES-GCM authentication."""


class InsufficientParticipantsError(SecAggError):
    """Fewer than ``threshold`` participants remain; the round cannot complete."""


class ProtocolStateError(SecAggError):
    """A stage was invoked in the wrong order, or after the round failed."""


class ReconstructionError(SecAggError):
    """Secret reconstruction failed (e.g. recovered key does not match its public key)."""
