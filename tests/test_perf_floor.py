"""The floor benchmark: its reads cover exactly the graph's columns, and one run on a tiny dataset."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bench.perf import floor


@pytest.mark.parametrize("threads", [1, 2])
def test_random_row_read_reads_every_column_in_order(threads, monkeypatch):
    monkeypatch.setattr(floor, "CHUNK_ROWS", 7)
    x = torch.randn(50, 3)
    cols = torch.randint(0, 50, (40,))
    seen: list[torch.Tensor] = []
    real = torch.index_select

    def spy(src, dim, index, out):
        seen.append(index)
        return real(src, dim, index, out=out)

    monkeypatch.setattr(torch, "index_select", spy)
    with ThreadPoolExecutor(1) as pool:
        floor.random_row_read(x, cols, threads, pool)()
    # 40 columns in chunks of 7: 6 chunks, each read once; with 2 threads in either order
    assert len(seen) == 6
    assert sorted(torch.cat(seen).tolist()) == sorted(cols.tolist())
    if threads == 1:
        assert torch.equal(torch.cat(seen), cols)


def test_floor_on_the_tiny_dataset(tiny_root, tmp_path):
    assert floor.main(["--datasets", "tiny", "--data-dir", str(tiny_root), "--repeats", "2",
                       "--out", str(tmp_path)]) == 0
    text = (tmp_path / "floor.md").read_text()
    assert "| tiny |" in text and "step / floor" in text
    rows = (tmp_path / "floor.csv").read_text().splitlines()
    assert len(rows) == 3  # header, 1 thread, 2 threads
    header = rows[0].split(",")
    for row in rows[1:]:
        r = dict(zip(header, row.split(","), strict=False))
        floor_s = 2 * floor.LAYERS * float(r["random_read_s"]) + float(r["adam_s"])
        assert float(r["floor_step_s"]) == pytest.approx(floor_s)
        assert float(r["step_over_floor"]) == pytest.approx(float(r["step_s"]) / floor_s)
