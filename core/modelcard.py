"""Model cards: what a trained model was trained on and what it can serve.

Saved with every trained model (inside ``model.pt`` and as ``model_card.json`` beside it) by the
train stage. ``infer`` and ``apply`` check their inputs against the card: a clear refusal
(:class:`Incompatible`) naming the mismatch and the way forward, or a warning saying how far
out of distribution an input is (after Mitchell et al., "Model Cards for Model Reporting",
FAT* 2019, restricted to what a program can check).

A card is a JSON mapping::

    {"card_version": 1, "domain": ..., "created": ...,
     "data": {"source": "simulate" | "files", "fingerprint": sha256, "files": [...]},
     "serves": {...},          # the domain's: sizes, grids, variables / genes by name, physics
     "normalisation": {...},   # the domain's statistics of the training data
     "sigma": {"min": ..., "max": ..., "data": ...},
     "config": {...}}
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_VERSION",
    "Incompatible",
    "read_card",
    "card_path",
    "new_card",
    "require",
    "require_names",
    "warn_outside",
]

CARD_VERSION = 1


class Incompatible(ValueError):
    """An input the model cannot serve; the message names the mismatch and the way forward."""


def card_path(model_path: str | Path) -> Path:
    """``model_card.json`` beside ``model.pt``."""
    return Path(model_path).with_name("model_card.json")


def new_card(
    domain: str,
    *,
    config: Mapping[str, Any],
    data: Mapping[str, Any],
    serves: Mapping[str, Any],
    normalisation: Mapping[str, Any] | None = None,
    sigma: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A card as the train stage writes it."""
    return {
        "card_version": CARD_VERSION,
        "domain": domain,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": dict(data),
        "serves": dict(serves),
        "normalisation": dict(normalisation or {}),
        "sigma": dict(sigma or {}),
        "config": dict(config),
    }


def read_card(model_path: str | Path, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card of a trained model (from its payload if given, else ``model_card.json``).

    Raises
    ------
    Incompatible
        The model has no card (trained before model cards existed) or another domain's.
    """
    card = (payload or {}).get("card")
    path = card_path(model_path)
    if card is None and path.is_file():
        card = json.loads(path.read_text())
    if card is None:
        raise Incompatible(
            f"{model_path}: no model card (the model was trained before diffsci saved model "
            "cards, so what it can serve is unknown); retrain it with `diffsci train` (or the "
            "train rule) to apply it to new data"
        )
    if card.get("card_version", 0) > CARD_VERSION:
        raise Incompatible(
            f"{model_path}: model card version {card['card_version']} is newer than this "
            f"diffsci's ({CARD_VERSION}); upgrade diffsci"
        )
    return card


def require(what: str, found: Any, served: Any, *, source: str, fix: str) -> None:
    """Refuse ``found`` unless it equals what the card ``served``."""
    if found != served:
        raise Incompatible(f"{source}: {what} is {found!r} but the model serves {served!r}; {fix}")


def require_names(
    what: str, found: Sequence[str], served: Sequence[str], *, source: str, fix: str
) -> None:
    """Refuse names (variables, genes, channels) other than the card's, listing the difference."""
    found, served = list(map(str, found)), list(map(str, served))
    if found == served:
        return
    missing = [n for n in served if n not in set(found)]
    extra = [n for n in found if n not in set(served)]
    detail = []
    if missing:
        detail.append(f"missing {len(missing)}: {', '.join(missing[:10])}")
    if extra:
        detail.append(f"not served {len(extra)}: {', '.join(extra[:10])}")
    if not detail:
        detail.append("same names in another order")
    raise Incompatible(f"{source}: {what} differ from the model's ({'; '.join(detail)}); {fix}")


def warn_outside(
    what: str, value: float, lo: float, hi: float, *, source: str, tolerance: float = 0.0
) -> bool:
    """Warn (and return True) when ``value`` lies outside the training range ``[lo, hi]`` widened
    by ``tolerance`` times its width, saying by how much."""
    width = max(hi - lo, 1e-12)
    a, b = lo - tolerance * width, hi + tolerance * width
    if a <= value <= b:
        return False
    by = (value - hi) / width if value > hi else (lo - value) / width
    warnings.warn(
        f"{source}: {what} {value:.4g} is outside the training range [{lo:.4g}, {hi:.4g}] by "
        f"{by:.2f} x its width; the model extrapolates here",
        stacklevel=2,
    )
    return True
