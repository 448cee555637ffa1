"""Exceptions raised by :mod:`privacy`.

Tree::

    FedCtxError
    ├─ ConfigError (ValueError)         invalid privacy / CKKS parameters
    ├─ PrivacyError
    │  └─ BudgetExhaustedError          a release would exceed the epsilon budget
    └─ CryptoError
       ├─ CkksParameterMismatchError    ciphertext/context from another CKKS setup
       ├─ CiphertextError               malformed or wrongly sized ciphertext
       ├─ PrecisionError                CKKS error not far below the DP noise / overflow risk
       └─ KeyShareError                 sealed key bundle cannot be verified or opened
"""

from __future__ import annotations


class FedCtxError(Exception):
    """Root of every error fedctx raises on purpose."""


class ConfigError(FedCtxError, ValueError):
    """A configuration value is invalid."""


class PrivacyError(FedCtxError):
    """A differential-privacy invariant would be violated."""


class BudgetExhaustedError(PrivacyError):
    """A release would push the participant past its (epsilon, delta) budget."""


class CryptoError(FedCtxError):
    """Encryption, decryption or key handling failed."""


class CkksParameterMismatchError(CryptoError):
    """Data was produced under a different CKKS context or parameter set."""


class CiphertextError(CryptoError):
    """A ciphertext payload is malformed, truncated or has the wrong length."""


class PrecisionError(CryptoError):
    """CKKS parameters cannot carry the requested values accurately enough."""


class KeyShareError(CryptoError):
    """A sealed key bundle failed verification or decryption."""
