"""`qnnrepair bench`: every method side by side, or --merge of split runs."""

from __future__ import annotations

import shlex
from pathlib import Path

from qnnrepair.cli.options import image_size, norm_note
from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import check_output_folder


def cmd_bench(args) -> int:
    from dataclasses import replace
    from functools import partial

    from qnnrepair.bench import BenchConfig, BenchRecord, run_bench
    from qnnrepair.pipeline import prepare
    from qnnrepair.report import machine

    check_output_folder(args.output / "x")
    if args.merge:
        if (args.checkpoint or args.data or args.test_data or args.settings or args.quick
                or args.methods or args.on_top is not None):
            raise QnnRepairError("--merge only joins finished runs; leave out --checkpoint, "
                                 "--data, --test-data, --settings, --quick, --methods and "
                                 "--on-top")
        record = BenchRecord.merged(args.merge, args.output / args.name)
        record.write()
        print(f"wrote {args.output / args.name}.md, .json, .png: {len(record.rows)} rows from "
              f"{len(args.merge)} runs")
        return 0
    if not args.checkpoint or args.data is None or args.test_data is None:
        raise QnnRepairError("bench needs --checkpoint MODEL=FILE (repeatable), --data and "
                             "--test-data; see qnnrepair bench --help")
    models = [_name_and_path(item) for item in args.checkpoint]
    settings = tuple(args.settings or (("w4a4",) if args.quick else
                                       ("w8a8", "w4a8", "w3a8", "w4a4")))
    config = BenchConfig(adaround_iters=200 if args.quick else 1000, seed=args.seed)
    if args.quick:  # repairs are the slow rows (minutes each); one combination shows the idea
        config = replace(config, methods=tuple(m for m in config.methods if m != "paper"),
                         on_top=("adaround",))
    if args.methods or args.on_top is not None:
        methods = tuple(args.methods or config.methods)
        on_top = (tuple(m for m in config.on_top if m in methods) if args.on_top is None
                  else tuple(args.on_top))
        config = replace(config, methods=methods, on_top=on_top)
    n_test = args.n_test or (2000 if args.quick else None)
    key = {"config": config.to_dict(), "seed": args.seed, "sizes": {
        "repair": args.n_repair, "validation": args.n_validation, "test": n_test or "all"}}
    record = BenchRecord(args.output / args.name, key, fresh=args.fresh)
    piece = {"command": shlex.join(["qnnrepair", *args.argv]), "machine": machine(),
             "wall_s": 0.0, "done": []}
    workloads = [(model, partial(prepare, model, weights, args.data, args.test_data,
                                 n_repair=args.n_repair, n_validation=args.n_validation,
                                 n_test=n_test, seed=args.seed, mean=args.mean, std=args.std,
                                 size=image_size(args)))
                 for model, weights in models]
    for model, _ in models:
        norm_note(model, args)
    for model, setting, rows in run_bench(record, workloads, settings, config, piece,
                                          show_progress=args.progress):
        print(f"{model} {setting}: " + ", ".join(
            f"{r['method']} {r['result']['test']:.2f}" for r in rows), flush=True)
    if not piece["done"]:
        print(f"nothing to run: {args.output / args.name}.json has every model and setting "
              "asked for (--fresh runs them again)")
        return 0
    print(f"wrote {args.output / args.name}.md, .json, .png; this run {piece['wall_s']:.0f}s, "
          f"all runs {record.meta()['wall_s']:.0f}s")
    return 0


def _name_and_path(item: str) -> tuple[str, Path]:
    # Paths may hold '=' too: split where the right side is an existing file, else at the first.
    cuts = [i for i, ch in enumerate(item) if ch == "="]
    cut = next((i for i in cuts if Path(item[i + 1:]).is_file()), cuts[0] if cuts else -1)
    name, sep, path = item[:cut], item[cut:cut + 1], item[cut + 1:]
    if not sep or not name or not path:
        raise QnnRepairError(f"--checkpoint takes MODEL=FILE, e.g. resnet20=ckpt.th or "
                             f"nets.py:make_net=weights.pt; got {item!r}")
    return name, Path(path)


