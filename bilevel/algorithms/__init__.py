"""One file per algorithm; configs in configs/algorithm/<name>.yaml name the class by _target_."""

from bilevel.algorithms.base import Algorithm, LowerEstimateUpper, State
from bilevel.algorithms.bo_rep import BOREP
from bilevel.algorithms.soba import SOBA
from bilevel.algorithms.stocbio import StocBiO
from bilevel.algorithms.unibio import UniBiO

REGISTRY: dict[str, type[Algorithm]] = {
    "bo_rep": BOREP,
    "soba": SOBA,
    "stocbio": StocBiO,
    "unibio": UniBiO,
}

__all__ = [
    "REGISTRY",
    "Algorithm",
    "LowerEstimateUpper",
    "State",
    "BOREP",
    "SOBA",
    "StocBiO",
    "UniBiO",
]
