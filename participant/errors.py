"""Exceptions raised by :mod:`participant`.

Tree::

    privacy.errors.FedCtxError
    └─ ParticipantError
       ├─ UnsupportedArchitectureError (LookupError)   no layer map for the model_type
       ├─ LayerMapError (ValueError)                   a layer map does not fit the model
       ├─ HookError (RuntimeError)                     a hook saw an unexpected forward pass
       ├─ FoldError (ValueError)                       an injection cannot be folded into weights
       ├─ ModelLoadError (RuntimeError)                local model weights cannot be loaded
       ├─ TaskError (ValueError)                       invalid task spec or task data
       └─ ProtocolError (RuntimeError)                 the coordinator broke the protocol
"""

from __future__ import annotations

from privacy.errors import FedCtxError


class ParticipantError(FedCtxError):
    """Root of every error :mod:`participant` raises on purpose."""


class UnsupportedArchitectureError(ParticipantError, LookupError):
    """``config.model_type`` has no registered layer map and no explicit map was given."""


class LayerMapError(ParticipantError, ValueError):
    """A layer map does not fit the model: a path is missing, not a module, or sites are shared."""


class HookError(ParticipantError, RuntimeError):
    """A hooked output has the wrong shape, or a site did not fire exactly once per capture."""


class FoldError(ParticipantError, ValueError):
    """An injection cannot be folded into the model's weights (architecture, mode, shapes), or
    the folded model failed its check against the hooks (the weights are then restored)."""


class ModelLoadError(ParticipantError, RuntimeError):
    """A local model (package folder, weights, dtype) cannot be loaded."""


class TaskError(ParticipantError, ValueError):
    """A task specification or its data file is invalid."""


class ProtocolError(ParticipantError, RuntimeError):
    """The coordinator or the federation state violates the expected protocol."""

