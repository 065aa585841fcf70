"""bilevel: a reference suite for stochastic bilevel optimization.

Layers (DESIGN.md §3): tasks define f and g; the oracle layer is the only place that calls
autograd for bilevel quantities; estimators turn oracle calls into hypergradients; algorithms
are ``init`` + ``step``; the trainer owns the loop, devices, logging and checkpoints.
"""

__version__ = "0.1.0"
