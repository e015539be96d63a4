"""Methods: each module registers one method in METHODS and only defines its losses and prediction.

Importing this package registers every built-in method.
"""

from ..batch import Batch
from . import acr, finessl, fixmatch, fixmatch_la, fixmatch_la_smooth, loft, supervised, ulfine, zeroshot  # noqa: F401  (registration)
from .acr import ACROptions
from .base import (
    METHODS,
    Collectives,
    LocalCollectives,
    Method,
    MethodContext,
    MethodOptions,
    PseudoLabels,
    StepOutput,
)
from .finessl import FineSSLOptions
from .fixmatch_la import FixMatchLAOptions
from .loft import LoFTOptions
from .ulfine import ULFineOptions

__all__ = [
    "ACROptions", "METHODS", "Batch", "Collectives", "FineSSLOptions", "FixMatchLAOptions", "LoFTOptions",
    "LocalCollectives", "Method", "MethodContext", "MethodOptions", "PseudoLabels", "StepOutput", "ULFineOptions",
]
