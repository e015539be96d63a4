"""Methods: each module registers one method in METHODS and only defines its losses and prediction.

Importing this package registers every built-in method.
"""

from ..batch import Batch
from . import (  # noqa: F401  (registration)
    abc,
    acr,
    cdmad,
    cpe,
    daso,
    debiaspl,
    finessl,
    fixmatch,
    fixmatch_la,
    fixmatch_la_smooth,
    loft,
    simpro,
    supervised,
    ulfine,
    zeroshot,
)
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
