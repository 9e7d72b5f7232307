"""The committed bench results are drawn from their JSON: rendering it again gives the same files.

The merged bench table (bench.md) is drawn from its .json by
`BenchRecord(stem, key).write()`; a change to the table's layout shows here as a byte diff.
"""

import json
import shutil
from pathlib import Path

import pytest

from qnnrepair.bench import BenchRecord

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("stem", ["bench"])
def test_committed_results_render_from_their_json_byte_for_byte(tmp_path, stem):
    shutil.copy(RESULTS / f"{stem}.json", tmp_path)
    key = json.loads((RESULTS / f"{stem}.json").read_text())["meta"]["key"]
    record = BenchRecord(tmp_path / stem, key)
    assert record.rows, f"{stem}.json read back no rows"
    record.write()
    for suffix in (".json", ".md"):
        got = (tmp_path / stem).with_suffix(suffix).read_bytes()
        want = (RESULTS / stem).with_suffix(suffix).read_bytes()
        assert got == want, f"{stem}{suffix} differs from the committed file"
    assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
