"""``lightgcn``: the uncompressed reference, i.e. the shared base LightGCN checkpoint itself.

Every compressed cell of a (dataset, seed) is compared with this model; because the reference
*is* the base checkpoint that teacher- and checkpoint-based methods start from, the comparison
starts from one and the same trained model (its hash is recorded with every cell).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.api import REFERENCE, CompressedModel, Method, Target, register_method
from methods.shared.dense import dense_tables

if TYPE_CHECKING:  # pragma: no cover
    from bench.api import MethodContext


@register_method(REFERENCE)
class LightGCNReference(Method):
    axes = ()
    description = "Uncompressed LightGCN (He et al., SIGIR 2020): the reference every method is compared with"
    target_mapping = "none: always the full model (all embedding entries, all edges, the budget's layers)"
    uses_base = True

    def compress(self, context: MethodContext, target: Target) -> CompressedModel:
        base = context.base()
        model = base.model
        return CompressedModel(
            module=model,
            artifact=dense_tables(model),
            graph=model.graph,
            n_layers=model.n_layers,
            training=base.training,
            settings={"dim": model.dim, "n_layers": model.n_layers},
        )
