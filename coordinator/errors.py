"""Exceptions raised by :mod:`coordinator`; ``servicer.py`` maps them to gRPC codes.

Tree::

    privacy.errors.FedCtxError
    └─ CoordinatorError
       ├─ InvalidContributionError  malformed / wrong size / foreign context -> INVALID_ARGUMENT
       ├─ BindingMismatchError      wrong federation, model, layer map, keys -> INVALID_ARGUMENT
       ├─ NotAllowedError           peer not in roster / not the keyholder   -> PERMISSION_DENIED
       ├─ RoundClosedError          round closed or failed                   -> FAILED_PRECONDITION
       ├─ NotReadyError             keys or aggregate not available yet      -> FAILED_PRECONDITION
       ├─ ConflictError             a different upload already accepted      -> ALREADY_EXISTS
       ├─ PayloadTooLargeError      over the configured size limit           -> RESOURCE_EXHAUSTED
       └─ NotFoundError             unknown round                            -> NOT_FOUND
"""

from __future__ import annotations

from privacy.errors import FedCtxError


class CoordinatorError(FedCtxError):
    """Root of coordinator errors."""


class InvalidContributionError(CoordinatorError):
    """The contribution is malformed, wrongly sized, or from a foreign CKKS context."""


class BindingMismatchError(CoordinatorError):
    """The header disagrees with the federation's pinned bindings."""


class NotAllowedError(CoordinatorError):
    """The authenticated peer may not perform this call."""


class RoundClosedError(CoordinatorError):
    """The round no longer accepts contributions."""


class NotReadyError(CoordinatorError):
    """What was asked for does not exist yet; poll again."""


class ConflictError(CoordinatorError):
    """A different contribution from this participant is already in the round."""


class PayloadTooLargeError(CoordinatorError):
    """The payload exceeds the configured limit."""


class NotFoundError(CoordinatorError):
    """No such round."""
