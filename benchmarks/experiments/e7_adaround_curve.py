"""AdaRound's cost curve on E7's MobileNetV2 W4A8: iterations per layer against top-1.

    python benchmarks/experiments/e7_adaround_curve.py [--iterations 250 1000 3000 10000]
        [--images 256] [--file quant] [--on-top] [--fresh | --render]

The published setting is 10,000 to 20,000 iterations per layer on 1,024 images; on this 2-core
machine E7 runs 1,000 iterations on 256 images (about 1,250 CPU s). This runs E7's `adaround`
row (the file's float reference re-quantized W4A8 per channel, first and last
layer at 8 bits, R / V / T as in E7) at growing iteration counts, each in its own process
(e7_imagenet.py's child), so a reader sees where accuracy flattens and what each step costs.
With --on-top the default repair also runs on each AdaRound model, in the same process (E7's
`adaround+qnnrepair` row at that iteration count). Writes
benchmarks/results/experiments/e7_adaround_curve.{md,json}; rows are kept as they finish and a
rerun resumes.
"""

from __future__ import annotations

import sys

from _shared import arguments, commands, header, meta, results, write
from e7_imagenet import FILES, child

NAME = "e7_adaround_curve"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--iterations", nargs="+", type=int, default=[250, 1000, 3000, 10000])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--file", default="quant", choices=FILES)
    parser.add_argument("--on-top", action="store_true",
                        help="also repair each AdaRound model (the row adaround+qnnrepair)")
    args = parser.parse_args()
    rows = results(NAME, args.fresh)
    m = meta(file=args.file, images=args.images)
    if not args.render:
        # what e7_imagenet.py's child passes on, at E7's defaults
        args.n_repair, args.n_validation, args.bc_images = 1000, 500, 64
        args.adaround_images = args.images
        methods = ["adaround", "adaround+qnnrepair"] if args.on_top else ["adaround"]
        for iterations in args.iterations:
            key = {"file": args.file, "iterations": iterations, "images": args.images}
            if all(rows.has(**key, method=method) for method in methods):
                continue
            args.adaround_iters = iterations
            print(f"{' and '.join(methods)}, {iterations} iterations ...", file=sys.stderr,
                  flush=True)
            for row in child(args, args.file, "w4a8", methods):
                earlier = rows.get(**key, method=row["method"])
                if earlier is None:
                    rows.add({**row, **key, "command": m["command"]}, m)
                elif earlier["test_correct"] != row["test_correct"]:  # same seed, same model
                    print(f"{row['method']} differs from its earlier row on T", file=sys.stderr)
    render(rows.rows, m)


def render(rows: list[dict], m: dict) -> None:
    what = ("Top-1 (%) of AdaRound on E7's MobileNetV2 W4A8 (per channel, first and last layer "
            "at 8 bits, BatchNorm folded) by iterations per layer; R = sample1000, V / T = "
            "halves of nips17. CPU s include the RTN quantization it starts from; they grow when "
            "other jobs share the 2 cores (load: the 1-minute load average as the row ended; "
            "compare E7's own 1,000-iteration row in e7_imagenet.md).")
    lines = header("AdaRound's cost curve (E7, MobileNetV2 W4A8)", m, what)
    lines[4:5] = commands(rows, "")
    if rows:
        f = rows[0]["float"]
        lines += [f"Float reference: V {f['validation']:.1f}, T {f['test']:.1f}.", ""]
    lines += ["| file | images | iterations | method | V | T | T - float | CPU s | wall s | "
              "peak MiB | revision, load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["file"], r["images"], r["iterations"], r["method"])):
        t = r["result"]["test"]
        lines.append(f"| {FILES[r['file']]} | {r['images']} | {r['iterations']} | {r['method']} | "
                     f"{r['result']['validation']:.1f} | {t:.1f} | {t - r['float']['test']:+.1f} "
                     f"| {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['peak_mib']:.0f} | "
                     f"{r.get('revision', '-')}, {r.get('load', 0):.1f} |")
    write(NAME, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
