"""Claims as data: what a method's paper says, in a form the report can check against the store.

A method declares its paper's claims in its ``claims`` class attribute (:class:`bench.contract.Method`)
as :class:`Claim` records: where the paper made the claim (its datasets and table), the two arms
compared (:class:`Arm`: a method, options and target, each selecting cells of a store), the metric,
the relation and the margin, and the paper's own figures where it gives them. Third-party plugins
declare theirs the same way. The report evaluates every claim on the paper's datasets (``not run``
where cells are missing) and, as a transfer, on every other dataset where both arms have cells, and
gives a computed verdict (:mod:`bench.report.claims`, the report's "Claims" section); nothing here is
typed in by hand except what the paper says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``at_least``: subject >= (1 - margin) x comparator (non-inferiority, e.g. "within 2% of dense");
#: ``above``: subject > (1 + margin) x comparator (superiority, e.g. "above random pruning").
RELATIONS = ("at_least", "above")


@dataclass(frozen=True)
class Arm:
    """One side of a claim: the cells of ``method`` whose options include ``options`` (a subset
    match: unspecified options are free) at the embedding target ``emb`` and edge target ``edge``
    (None: the uncompressed reference's, i.e. no target)."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    emb: float | None = None
    edge: float | None = None

    def describe(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        targets = [f"emb={self.emb:g}"] if self.emb is not None else []
        if self.edge is not None:
            targets.append(f"edge={self.edge:g}")
        name = f"{self.method}[{opts}]" if opts else self.method
        return f"{name} at {', '.join(targets)}" if targets else name


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, checkable on a results store.

    ``id``: unique across methods (``<method>-<short name>``); ``source``: the paper and the table
    or figure; ``statement``: the claim in words; ``datasets``: the datasets (names of this
    project's catalog) the paper made it on (elsewhere the check is a transfer, not a
    replication); ``subject`` and ``comparator``: the two arms; ``metric``: a stored test metric
    (``recall@20``); ``relation`` and ``margin``: see :data:`RELATIONS`; ``paper``: the paper's
    figures, ``{"subject": ..., "comparator": ...}`` (either may be absent).
    """

    id: str
    method: str
    source: str
    statement: str
    datasets: tuple[str, ...]
    subject: Arm
    comparator: Arm
    metric: str = "recall@20"
    relation: str = "at_least"
    margin: float = 0.0
    paper: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"claim {self.id}: relation must be one of {RELATIONS}, got {self.relation!r}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"claim {self.id}: margin must be in [0, 1), got {self.margin}")
        if not self.datasets:
            raise ValueError(f"claim {self.id}: name the dataset(s) the paper made it on")

    def threshold(self, comparator_value: float) -> float:
        """The value the subject must reach (``at_least``) or exceed (``above``)."""
        if self.relation == "at_least":
            return (1 - self.margin) * comparator_value
        return (1 + self.margin) * comparator_value
