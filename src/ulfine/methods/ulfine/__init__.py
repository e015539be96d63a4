"""ULFine (arXiv 2505.05062): PAF + DLF. Importing this package registers ``ulfine`` in METHODS."""

from . import dlf, paf
from .method import ULFine, ULFineOptions

__all__ = ["ULFine", "ULFineOptions", "dlf", "paf"]
