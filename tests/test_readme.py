"""The README's examples run: every fenced TOML block and every ``recshrink`` command line.

Each example runs as written, except for the dataset and the training budget. Dataset names
(``ml-100k``, ``citeulike``, ``yelp-lightgnn``) become the tiny test dataset, and its data root
replaces ``--data-dir``. Matrices get the tests' tiny budget. The built-in quick matrix
(``recshrink run`` alone: every method on ml-100k, about 20 minutes) is loaded and planned here
rather than trained; it is the main job CI runs. The ``pip``/``tox`` set-up lines are what CI
itself runs.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from tests.helpers import TINY_BUDGET

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = Path(__file__).resolve().parents[1] / "README.md"
DATASETS = re.compile(r"\b(ml-100k|citeulike|yelp-lightgnn)\b")


def fenced(lang: str) -> list[str]:
    """The README's fenced blocks of ``lang``, in order."""
    return [m.group(1) for m in re.finditer(rf"```{lang}\n(.*?)```", README.read_text(), re.S)]


def commands() -> list[str]:
    """Every ``recshrink`` command line of the README's bash blocks (comments dropped)."""
    lines = [ln.split("  #")[0].strip() for block in fenced("bash") for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith("recshrink ")]


def tiny_matrix(toml: str, root: Path) -> str:
    """A README matrix on the tiny dataset: its datasets replaced, one target and seed, tiny budget."""
    toml = DATASETS.sub("tiny", toml).replace('"tiny", "tiny"', '"tiny"')
    toml = re.sub(r"^emb_targets = \[[^\]]*\]", "emb_targets = [0.5]", toml, flags=re.M)
    toml = re.sub(r"^seeds = \[[^\]]*\]", "seeds = [0]", toml, flags=re.M)
    head = f'data_dir = "{root}"\n'
    if "name =" not in toml:
        head += 'name = "readme"\ndatasets = ["tiny"]\nemb_targets = [0.5]\nseeds = [0]\n'
    # top-level keys must come before the first table
    return head + toml + TINY_BUDGET


def test_every_toml_block_parses():
    blocks = fenced("toml")
    assert len(blocks) >= 4
    for block in blocks:
        tomllib.loads(block)


def test_the_matrix_examples_run_on_the_tiny_dataset(tiny_root, tmp_path):
    from bench.config import load_config
    from bench.runner import run_matrix

    matrices = [b for b in fenced("toml") if "methods" in b and "entry-points" not in b]
    assert len(matrices) == 2, "the minimal config and the method-tables example"
    for i, block in enumerate(matrices):
        path = tmp_path / f"readme-{i}.toml"
        path.write_text(tiny_matrix(block, tiny_root))
        summary = run_matrix(load_config(path), tmp_path / f"out-{i}", progress=False, log=lambda m: None,
                             report=False)
        assert summary.failed == 0 and summary.ok == summary.total >= 2


def test_the_entry_point_example_names_the_group_the_registry_reads():
    from bench.registry import ENTRY_POINT_GROUP

    (block,) = [b for b in fenced("toml") if "entry-points" in b]
    assert list(tomllib.loads(block)["project"]["entry-points"]) == [ENTRY_POINT_GROUP]


def test_the_catalog_example_loads(tmp_path):
    from bench.data.loading import load_dataset

    (block,) = [b for b in fenced("toml") if "[[source]]" in b]
    root = tmp_path / "data"
    (root / "mydata").mkdir(parents=True)
    (root / "mine.toml").write_text(block)
    rng = np.random.default_rng(0)
    rows = {(u, i) for u in range(40) for i in rng.choice(30, size=12, replace=False)}
    lines = ["user,item,rating"] + [f"{u},{i},{4 + (u + i) % 2}" for u, i in sorted(rows)]
    (root / "mydata" / "ratings.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset("mine", root, use_cache=False)
    assert data.n_users == 40 and len(data.train) + len(data.valid) + len(data.test) == len(rows)


def test_every_command_line_runs(tiny_root, tmp_path, monkeypatch, capsys):
    from bench.config import load_config

    lines = commands()
    assert len(lines) >= 7
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-matrix.toml").write_text(tiny_matrix(fenced("toml")[0], tiny_root))
    for line in lines:
        args = shlex.split(DATASETS.sub("tiny", line))[1:]
        if "--data-dir" in args:
            args[args.index("--data-dir") + 1] = str(tiny_root)
        elif args[0] in ("datasets", "train"):
            args += ["--data-dir", str(tiny_root)]
        if args == ["run"]:  # the built-in quick matrix: loaded and planned, not trained here
            config = load_config(None)
            assert config.name == "quick" and config.datasets == ["ml-100k"] and len(config.methods) >= 8
            continue
        if args[0] == "run":
            args += ["--no-progress"]
        if args[0] == "train":
            args += ["--epochs", "2", "--no-progress"]
        if args[0] in ("report", "status"):  # the quick matrix's folder: the matrix run just above
            args[1] = "reports/my-matrix"
        assert main(args) == 0, (line, capsys.readouterr().err)
        out = capsys.readouterr().out
        if args[0] == "status":
            assert "reports/my-matrix: no run is writing here" in out and " ok" in out
    assert (tmp_path / "reports" / "quick-report" / "index.html").is_file()


@pytest.mark.parametrize("line", [ln for ln in commands() if ln.startswith("recshrink run ")])
def test_command_examples_name_real_options(line):
    from bench.cli import build_parser

    build_parser().parse_args(shlex.split(line)[1:])
