"""ND layers and pixel models (pure torch, no file I/O).

Importing this package registers every model kind in :data:`MODEL_KINDS`; modules defining new
kinds (e.g. denoisers) decorate their class with :func:`register_model` and are imported here.
"""

from ndgeo.nn.denoisers import (
    BACKBONES,
    DnCNN,
    NEArch,
    WindowTransformer,
    build_denoiser,
    window_transformer_receptive_field,
)
from ndgeo.nn.models import (
    MLP,
    NDClassifier,
    mlp_hidden_for_budget,
    mlp_n_parameters,
    nd_indices_for_budget,
)
from ndgeo.nn.nd import NDInputError, NDLayer, select_pairs
from ndgeo.nn.registry import MODEL_KINDS, build_model, register_model
from ndgeo.nn.wne import (
    WNE,
    Moments,
    block_moments,
    combine_moments,
    measure_receptive_field,
    moments_to_stats,
    wne_stats,
)

__all__ = [
    "BACKBONES",
    "WNE",
    "DnCNN",
    "Moments",
    "NEArch",
    "WindowTransformer",
    "block_moments",
    "build_denoiser",
    "combine_moments",
    "measure_receptive_field",
    "moments_to_stats",
    "window_transformer_receptive_field",
    "wne_stats",
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
