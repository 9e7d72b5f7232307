"""Resuming and merging: the rows of a bench run in <stem>.json, beside their table and plot."""

from __future__ import annotations

import json
from pathlib import Path

from qnnrepair.bench.render import plot, render_markdown
from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import atomic_path


class Rows:
    """Result rows of a benchmark script kept in a JSON file ({"meta", "rows"}), rewritten
    atomically after every row, so an interrupted run resumes where it stopped."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.rows: list[dict] = [] if fresh or not path.exists() else \
            json.loads(path.read_text())["rows"]

    def has(self, **key) -> bool:
        return self.get(**key) is not None

    def get(self, **key) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict, meta: dict) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": self.rows}, indent=1))
        tmp.replace(self.path)


class BenchRecord:
    """The rows of one bench run, kept in <stem>.json and rewritten with the Markdown table and
    the plot after every (model, setting), so that a long run can be split into invocations:
    each skips the pieces it finds. `key` (config and splits) must match the file's."""

    def __init__(self, stem: Path, key: dict, fresh: bool = False) -> None:
        self.stem, self.key = stem, json.loads(json.dumps(key))  # tuples read back as lists
        self.rows: list[dict] = []
        self.pieces: list[dict] = []
        path = stem.with_suffix(".json")
        if fresh or not path.exists():
            return
        saved = json.loads(path.read_text())
        if saved["meta"].get("key") != self.key:
            raise QnnRepairError(f"{path} holds a bench run with other settings; pass --fresh "
                                 "to start it again or --name for a new file")
        self.rows, self.pieces = saved["rows"], saved["meta"]["pieces"]

    def __repr__(self) -> str:
        return f"BenchRecord({str(self.stem)!r}, {len(self.rows)} rows, {len(self.pieces)} pieces)"

    @classmethod
    def merged(cls, paths: list[Path], stem: Path) -> BenchRecord:
        """One record from runs split over processes or machines (each its own file): same
        config and sizes, no (model, setting, seed) twice. Runs may differ in the seed of their
        splits: then every row keeps its seed and the table shows mean and range over seeds.
        The inputs are read, never written."""
        if stem.with_suffix(".json").resolve() in {p.resolve() for p in paths}:
            raise QnnRepairError(f"--merge would overwrite its input {stem}.json; pick another "
                                 "--name")
        saved = [_read_run(path) for path in paths]
        keys = [run["meta"]["key"] for run in saved]
        seeds = sorted({key["seed"] for key in keys})
        record = cls(stem, _with_seeds(keys[0], seeds), fresh=True)
        for path, run in zip(paths, saved):
            if _with_seeds(run["meta"]["key"], seeds) != record.key:
                raise QnnRepairError(f"{path} ran with other settings than {paths[0]}; only runs "
                                     "of the same config and sizes merge (seeds may differ)")
            seed = run["meta"]["key"]["seed"]
            rows = [{**r, "seed": seed} for r in run["rows"]] if len(seeds) > 1 else run["rows"]
            clash = next((r for r in rows if record.done(r["model"], r["setting"],
                                                         r.get("seed"))), None)
            if clash:
                raise QnnRepairError(f"{path} repeats {clash['model']} {clash['setting']}; "
                                     "merge runs of different (model, setting) pieces or seeds")
            record.rows += rows
            record.pieces += run["meta"]["pieces"]
        return record

    def done(self, model: str, setting: str, seed: int | None = None) -> bool:
        return any(r["model"] == model and r["setting"] == setting and r.get("seed") == seed
                   for r in self.rows)

    def add(self, rows: list[dict], piece: dict) -> None:
        """Append one (model, setting)'s rows; `piece` is this invocation's command and clock,
        replaced as the invocation goes on."""
        self.rows += rows
        if not self.pieces or self.pieces[-1] is not piece:
            self.pieces.append(piece)
        self.write()

    def meta(self) -> dict:
        return {"key": self.key, "pieces": self.pieces,
                "wall_s": sum(p["wall_s"] for p in self.pieces)}

    def write(self) -> None:
        """<stem>.json, and the .md table and .png plot drawn from it."""
        meta = self.meta()
        with atomic_path(self.stem.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"meta": meta, "rows": self.rows}, indent=1))
        with atomic_path(self.stem.with_suffix(".md")) as tmp:
            tmp.write_text(render_markdown(self.rows, meta))
        with atomic_path(self.stem.with_suffix(".png")) as tmp:
            plot(self.rows, tmp)


def _with_seeds(key: dict, seeds: list[int]) -> dict:
    """`key` with the seed of its splits (and of its config) replaced by `seeds`: a list when
    runs of several seeds merge, the one seed otherwise."""
    seed = seeds if len(seeds) > 1 else seeds[0]
    return {**key, "seed": seed, "config": {**key["config"], "seed": seed}}


def _read_run(path: Path) -> dict:
    """A bench .json file, checked for the parts that merging uses."""
    hint = "--merge takes the .json files that bench wrote"
    try:
        run = json.loads(path.read_text())
    except OSError as err:
        raise QnnRepairError(f"cannot read {path} ({err.strerror}); {hint}") from None
    except ValueError:
        run = None
    meta = run.get("meta") if isinstance(run, dict) else None
    if not (isinstance(meta, dict) and {"key", "pieces"} <= meta.keys() and "rows" in run):
        raise QnnRepairError(f"{path} is not a bench results file; {hint}")
    return run
