"""The paper claims every registered method declares (``Method.claims``, :mod:`bench.claims`) are
well-formed: unique ids, the declaring method, registered arms with valid options and targets, catalog
datasets, stored metrics, and paper figures that satisfy the claim as declared; the claims the shipped
configs can check select cells those configs produce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.claims import RELATIONS, Arm, Claim
from bench.config import load_config
from bench.contract import REFERENCE, MethodError, Target
from bench.data.catalog import builtin_catalog
from bench.evaluation import DEFAULT_KS
from bench.metrics import METRIC_NAMES
from bench.registry import available_methods

ROOT = Path(__file__).resolve().parent.parent
#: the built-in methods with a paper of their own (the others are baselines and the reference)
PAPER_METHODS = ("dsl", "legcf", "lerg", "lightgnn", "unkd")
#: claims whose two arms select cells that the configs under bench/configs produce (on some dataset)
CHECKABLE_BY_SHIPPED_CONFIGS = (
    "dsl-par-dense", "dsl-above-rp", "dsl-above-omp",
    "legcf-vs-full", "legcf-above-no-update", "legcf-above-random-init",
    "lerg-vs-legcf",
    "lightgnn-above-dense-33-77", "lightgnn-at-least-dense-26-74", "lightgnn-at-least-dense-11-60",
    "lightgnn-at-least-dense-08-57",
    "lightgnn-above-random-both-33-77", "lightgnn-above-random-both-11-60",
    "lightgnn-above-random-both-08-57",
)


def _claims() -> list[tuple[str, Claim]]:
    return [(name, claim) for name, cls in available_methods().items() for claim in cls.claims]


def _arms(claim: Claim) -> tuple[Arm, Arm]:
    return claim.subject, claim.comparator


def _holds(claim: Claim, subject: float, comparator: float) -> bool:
    threshold = claim.threshold(comparator)
    return subject >= threshold if claim.relation == "at_least" else subject > threshold


def test_every_paper_method_declares_claims():
    methods = available_methods()
    for name in PAPER_METHODS:
        claims = methods[name].claims
        assert isinstance(claims, tuple) and claims, f"{name} declares no claim of its paper"
        assert all(isinstance(c, Claim) for c in claims), name


def test_claim_ids_are_unique_and_name_the_declaring_method():
    ids = [claim.id for _, claim in _claims()]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    for name, claim in _claims():
        assert claim.method == name, claim.id
        assert claim.id.startswith(f"{name}-"), claim.id
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", claim.id), claim.id
        assert claim.subject.method == name, f"{claim.id}: the subject arm is the declaring method's"


def test_claims_say_where_and_what():
    for _, claim in _claims():
        assert claim.source.strip() and claim.statement.strip(), claim.id
        # one sentence: ends with a full stop, no second sentence inside
        assert claim.statement.endswith("."), claim.id
        assert not re.search(r"[.;:!?] [A-Z][a-z]+ ", claim.statement.replace("Table ", "table ")), claim.id


def test_claim_datasets_are_in_the_catalog():
    catalog = builtin_catalog()
    for _, claim in _claims():
        assert isinstance(claim.datasets, tuple) and claim.datasets, claim.id
        assert len(set(claim.datasets)) == len(claim.datasets), claim.id
        unknown = [d for d in claim.datasets if d not in catalog]
        assert not unknown, f"{claim.id}: {unknown} not in the dataset catalog"


def test_claim_metric_relation_and_margin_are_valid():
    for _, claim in _claims():
        name, _, k = claim.metric.partition("@")
        assert name in METRIC_NAMES and k.isdigit() and int(k) in DEFAULT_KS, claim.id
        assert claim.relation in RELATIONS, claim.id
        assert 0 <= claim.margin < 1, claim.id


def test_claim_arms_are_registered_methods_with_valid_options_and_targets():
    methods = available_methods()
    for _, claim in _claims():
        subject, comparator = _arms(claim)
        assert subject != comparator, claim.id
        for arm in (subject, comparator):
            assert arm.method in methods, f"{claim.id}: {arm.method!r} is not a registered method"
            cls = methods[arm.method]
            try:
                resolved = cls.resolve_options(arm.options)
            except MethodError as exc:
                pytest.fail(f"{claim.id}: {exc}")
            assert all(resolved[k] == v and type(resolved[k]) is type(v) for k, v in arm.options.items()), \
                f"{claim.id}: options {dict(arm.options)} are not the knobs' own values"
            if arm.method == REFERENCE or not cls.axes:
                assert arm.emb is None and arm.edge is None and not arm.options, claim.id
                continue
            assert arm.emb is not None, f"{claim.id}: {arm.method} arm needs an emb target"
            try:
                cls.check_target(Target(emb=arm.emb, edge=arm.edge))
            except MethodError as exc:
                pytest.fail(f"{claim.id}: {exc}")


def test_paper_figures_support_the_claim_as_declared():
    for _, claim in _claims():
        assert set(claim.paper) <= {"subject", "comparator"}, claim.id
        assert all(0 < v <= 1 for v in claim.paper.values()), claim.id
        if len(claim.paper) == 2:
            assert _holds(claim, claim.paper["subject"], claim.paper["comparator"]), \
                f"{claim.id}: the paper's own figures {dict(claim.paper)} do not satisfy it"


def test_the_threshold_of_a_claim_follows_its_relation_and_margin():
    legcf = {c.id: c for c in available_methods()["legcf"].claims}
    assert _holds(legcf["legcf-vs-full"], 0.1444, 0.1576)  # 8.4% below, within the 9% margin
    assert not _holds(legcf["legcf-vs-full"], 0.1400, 0.1576)
    assert not _holds(legcf["legcf-above-no-update"], 0.1254, 0.1254)  # "above" is strict


def _matches(arm: Arm, cell) -> bool:
    if cell.method != arm.method:
        return False
    if arm.emb is None:
        if cell.emb_target != 1.0 or cell.edge_target is not None:
            return False
    elif cell.emb_target != arm.emb or cell.edge_target != arm.edge:
        return False
    resolved = available_methods()[cell.method].resolve_options(cell.options)
    return all(resolved[k] == v for k, v in arm.options.items())


def test_the_shipped_configs_produce_the_cells_of_the_checkable_claims():
    """Arms match cells by their options with the knobs' defaults filled in (a subset match), so a
    subject arm with ``ablation = "none"`` selects a config's cells that leave the ablation unset."""
    cells = [cell for path in sorted((ROOT / "bench" / "configs").glob("*.toml"))
             for cell in load_config(path).cells("cpu", {}, "")]
    claims = {claim.id: claim for _, claim in _claims()}
    for claim_id in CHECKABLE_BY_SHIPPED_CONFIGS:
        claim = claims[claim_id]
        for arm in _arms(claim):
            assert any(_matches(arm, cell) for cell in cells), \
                f"{claim_id}: no config cell for {arm.describe()}"


def test_each_method_page_lists_its_claims():
    for name, cls in available_methods().items():
        page = ROOT / "docs" / "methods" / f"{name}.md"
        if not page.is_file():  # a third-party plugin has no page here
            continue
        text = page.read_text(encoding="utf-8")
        assert "## Claims checked by the report" in text, name
        missing = [c.id for c in cls.claims if f"`{c.id}`" not in text]
        assert not missing, f"docs/methods/{name}.md does not list {missing}"
