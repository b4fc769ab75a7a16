"""The shared-machine benchmark runs end to end on a tiny dataset and writes its table."""

from __future__ import annotations

import pytest

from bench.perf import oversubscription


def test_oversubscription_on_the_tiny_dataset(tiny_root, tmp_path):
    assert oversubscription.main(["--datasets", "tiny", "--data-dir", str(tiny_root), "--busy", "0",
                                  "--repeats", "2", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "oversubscription.md").read_text()
    assert "| tiny | 0 | default |" in text and "| tiny | 0 | PASSIVE |" in text
    assert len((tmp_path / "oversubscription.csv").read_text().splitlines()) == 3


def test_negative_busy_counts_are_refused(capsys):
    with pytest.raises(SystemExit):
        oversubscription.main(["--busy", "-1"])
    assert "--busy counts must be >= 0" in capsys.readouterr().err
