"""The row store of the benchmark scripts: rows written after each add, read back on resume."""

import json

from qnnrepair.bench.record import Rows


def test_rows_resume_and_fresh(tmp_path):
    path = tmp_path / "out.json"
    rows = Rows(path, fresh=False)
    rows.add({"model": "a", "value": 1}, {"command": "x"})
    rows.add({"model": "b", "value": 2}, {"command": "x"})
    saved = json.loads(path.read_text())
    assert saved["meta"] == {"command": "x"} and len(saved["rows"]) == 2
    again = Rows(path, fresh=False)
    assert again.has(model="a") and not again.has(model="c")
    assert again.get(model="b") == {"model": "b", "value": 2}
    assert not Rows(path, fresh=True).rows
    assert not list(tmp_path.glob("*.tmp"))
