"""Both models of the domain as one module for the core's training loop, and its training set.

:class:`SingleCellModel` holds the population model (:mod:`.population`) and the lineage model
(:mod:`.tree`); one forward is their joint loss (:func:`joint_loss`). :class:`TensorItems` is
the training set: one item = one population (its displacements, condition, anchors and
perturbation) and a few lineage cells with their initial latents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from diffsci.core.denoisers import edm_loss

from .tree import LineageDiffusion

__all__ = ["SingleCellModel", "TensorItems", "joint_loss"]


class SingleCellModel(nn.Module):
    """Both models in one module for the core's training loop (one forward = the joint loss).

    ``forward(batch, rng)`` returns ``{"loss", "loss_perturbation", "loss_lineage"}``; the
    batch is what :class:`~diffsci.domains.singlecell.task.SingleCellTask.train_dataset`
    yields.
    """

    def __init__(
        self, perturbation: nn.Module, lineage: LineageDiffusion, *, lineage_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.perturbation = perturbation
        self.lineage = lineage
        self.lineage_weight = float(lineage_weight)

    def forward(self, batch: Mapping[str, Tensor], rng: Any) -> dict[str, Tensor]:
        cond = {k: batch[k] for k in ("control", "anchor", "perturbation")}
        if self.training and hasattr(self.perturbation, "fit_linear"):
            self.perturbation.fit_linear(batch["population"], cond)
        pert, x0 = self.perturbation, batch["population"]
        own_mean = getattr(pert, "mean_train_sigma", None) is not None
        if own_mean:
            lp, noise = pert.deviation_loss(x0, rng, cond=cond)
        else:
            lp = edm_loss(pert, x0, rng, cond=cond)
        cells = batch["cells"].flatten(0, 1)
        ll = self.lineage.loss(cells, batch["node0"].flatten(), batch["tau0"].flatten(), rng)
        if own_mean:
            # drawn after the lineage loss: the lineage model sees the same random stream
            # as in the joint loss without the mean head's own noise level
            lp = lp + pert.mean_loss(x0, rng, cond=cond, noise=noise)
        return {
            "loss": lp + self.lineage_weight * ll,
            "loss_perturbation": lp.detach(),
            "loss_lineage": ll.detach(),
        }


def joint_loss(model: nn.Module, batch: Mapping[str, Tensor], rng: Any) -> dict[str, Tensor]:
    """The training loss of :class:`SingleCellModel`: its forward (``{"loss", ...}``)."""
    return model(batch, rng)


class TensorItems(torch.utils.data.Dataset):
    """A dataset of named tensors with a common first dimension; item ``i`` is
    ``{name: tensor[i]}`` (the default collate stacks them back)."""

    def __init__(self, items: Mapping[str, Tensor]) -> None:
        self.items = dict(items)
        self.n = len(next(iter(self.items.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.items.items()}
