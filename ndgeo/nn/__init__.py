"""ND layers and pixel models (pure torch, no file I/O).

Importing this package registers every model kind in :data:`MODEL_KINDS`; modules defining new
kinds (e.g. denoisers) decorate their class with :func:`register_model` and are imported here.
"""

from ndgeo.nn.models import (
    MLP,
    NDClassifier,
    mlp_hidden_for_budget,
    mlp_n_parameters,
    nd_indices_for_budget,
)
from ndgeo.nn.nd import NDInputError, NDLayer, select_pairs
from ndgeo.nn.registry import MODEL_KINDS, build_model, register_model

__all__ = [
    "MLP",
    "MODEL_KINDS",
    "NDClassifier",
    "NDInputError",
    "NDLayer",
    "build_model",
    "mlp_hidden_for_budget",
    "mlp_n_parameters",
    "nd_indices_for_budget",
    "register_model",
    "select_pairs",
]
