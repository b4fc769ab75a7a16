"""The artifact of a dense LightGCN (the reference, a dense student, a model trained on dropped edges)."""

from __future__ import annotations

from bench.api import ArtifactPart, LightGCN


def dense_tables(model: LightGCN) -> list[ArtifactPart]:
    """The artifact of a dense LightGCN: its two float32 layer-0 tables."""
    return [
        ArtifactPart("user_emb", "values", model.user_emb.detach()),
        ArtifactPart("item_emb", "values", model.item_emb.detach()),
    ]
