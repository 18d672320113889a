"""Model kinds: a config dict with ``"kind"`` rebuilds the module that produced it.

Every model class (ND classifiers, MLP baselines, denoisers) registers itself with
:func:`register_model`; :func:`build_model` turns a ``config()`` dict back into a module with the
same architecture (weights come separately, from a state dict).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ndgeo.errors import NdgeoError

#: kind -> builder taking the whole config dict (including ``"kind"``) and returning a module.
MODEL_KINDS: dict[str, Callable[[dict], nn.Module]] = {}

_F = TypeVar("_F", bound=Callable[..., nn.Module])


def register_model(kind: str) -> Callable[[_F], _F]:
    """Register a class or factory under ``kind``; returns it unchanged (use as a decorator).

    The decorated callable is called with the config entries other than ``"kind"`` as keyword
    arguments, so ``Model(**config_without_kind)`` must rebuild the architecture.
    """

    def decorator(factory: _F) -> _F:
        registered = getattr(MODEL_KINDS.get(kind), "factory", None)
        if registered is not None and registered is not factory:
            raise ValueError(f"model kind {kind!r} is already registered by {registered!r}")

        def build(config: dict) -> nn.Module:
            return factory(**{k: v for k, v in config.items() if k != "kind"})

        build.factory = factory  # type: ignore[attr-defined]
        MODEL_KINDS[kind] = build
        return factory

    return decorator


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build the (untrained) module described by ``config`` (as returned by ``model.config()``)."""
    if not isinstance(config, dict) or "kind" not in config:
        raise NdgeoError(f"model config must be a dict with a 'kind' entry, got {config!r}")
    kind = config["kind"]
    if kind not in MODEL_KINDS:
        raise NdgeoError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}")
    try:
        return MODEL_KINDS[kind](config)
    except (TypeError, ValueError) as err:
        raise NdgeoError(f"invalid config for model kind {kind!r}: {err}") from err
