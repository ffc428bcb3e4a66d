"""picmap: 2-D maps of image collections with t-SimCNE."""

from .data import datasets
from .estimator import TSimCNE

__all__ = ["TSimCNE", "datasets"]
