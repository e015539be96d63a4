"""Methods: each module registers one method in METHODS and only defines its losses and prediction.

Importing this package registers every built-in method.
"""

from . import finessl, fixmatch, fixmatch_la, supervised, zeroshot  # noqa: F401  (registration)
from . import ulfine  # noqa: F401  (registers `ulfine`; package owned by the ulfine helper)
from .base import METHODS, Method, MethodContext, PseudoLabels, SSLBatch, StepOutput

__all__ = ["METHODS", "Method", "MethodContext", "PseudoLabels", "SSLBatch", "StepOutput"]
