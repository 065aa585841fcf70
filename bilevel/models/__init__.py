"""Models for the text tasks: plain ``nn.Module``s used functionally.

A task splits a model's parameters into x and y (:func:`split_params`) and evaluates it with
``functional(model)({**x, **y}, *inputs)`` (``torch.func.functional_call``). The models hold no
state that changes in forward, dropout defaults to 0, and every one supports a double backward
inside :func:`bilevel.oracles.second_order` (math attention kernel; cuDNN/mkldnn RNNs off).
"""

from bilevel.models.build import MODEL_KINDS, build_model
from bilevel.models.functional import (
    count_parameters,
    functional,
    prefix_predicate,
    seeded_init,
    split_params,
)
from bilevel.models.heads import LinearHead, MLPHead, NLIModel, SentenceClassifier, make_head
from bilevel.models.pooling import pool_time, valid_mask
from bilevel.models.rnn import FrozenEmbedding, RNNEncoder
from bilevel.models.transformer import TransformerEncoder

__all__ = [
    "MODEL_KINDS",
    "FrozenEmbedding",
    "LinearHead",
    "MLPHead",
    "NLIModel",
    "RNNEncoder",
    "SentenceClassifier",
    "TransformerEncoder",
    "build_model",
    "count_parameters",
    "functional",
    "make_head",
    "pool_time",
    "prefix_predicate",
    "seeded_init",
    "split_params",
    "valid_mask",
]
