"""Which acceptance rule to keep: every candidate of the default repair, recorded, and rules
replayed on the records.

The default repair builds every candidate from the starting model (candidates: the top 1, 8,
64, ... hidden neurons and all of them), so its candidates do not depend on which ones the guard keeps.
`record` runs the bench's splits (R = 1,000 training images, V = 1,000 images of the test file,
T = the other 9,000) for qnnrepair on RTN and on AdaRound, and saves each candidate's
predicted class and per-image KL(float || candidate) on V and T (`.npz`, one per run).
`replay` applies each rule of RULES to the records in two ways:

- on V only, which is how the rule is chosen: the guard sees one half of V, the other half
  scores its choice, and the halves swap (the rule then works on 500 images, not 1,000);
- on all of V, as the repair runs, scored on T (reported, not used to choose).

    python guard_rules.py record --model resnet20 --setting w4a4 --seed 0
    python guard_rules.py replay results/experiments/guard_rules/*.npz --output X.md
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import DEFAULT_SHARED, RESULTS, command, machine, workload

RECORDS = RESULTS / "experiments" / "guard_rules"
MIN_GAIN = 0.01  # the default rule's relative KL gain


def record(model: str, setting: str, seed: int, output: Path) -> None:
    from qnnrepair.baselines.adaround import adaround
    from qnnrepair.evaluation import logits_of
    from qnnrepair.quantization import QuantConfig, quantize
    from qnnrepair.repair import Repairer, engine, preset

    work = workload(model, DEFAULT_SHARED, seed=seed)
    images = torch.cat([work.images("validation"), work.images("test")])
    labels = torch.cat([work.labels("validation"), work.labels("test")])
    float_log_probs = F.log_softmax(logits_of(work.model, images).double(), dim=1)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Recording(engine.Guard):
        """The default guard, with every candidate's predictions on V and T kept."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.float_accuracy = math.inf  # never stop early: score every candidate

        def score(self, candidate):
            log_probs = F.log_softmax(logits_of(candidate, images).double(), dim=1)
            kl = (float_log_probs.exp() * (float_log_probs - log_probs)).sum(dim=1)
            seen.append((log_probs.argmax(dim=1).numpy().astype(np.int8),
                         kl.numpy().astype(np.float32)))
            return super().score(candidate)

    engine.Guard = Recording
    q = quantize(work.model, QuantConfig.from_setting(setting), work.images("repair"),
                 model_spec=model, seed=seed)
    starts = {"rtn": q, "adaround": adaround(q, work.images("repair"), seed=seed)}
    for name, start in starts.items():
        seen.clear()
        Repairer(preset("default", seed=seed)).fit(
            start, work.images("repair"), work.labels("repair"), work.images("validation"),
            work.labels("validation"))
        output.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(output / f"{model}-{setting}-s{seed}-{name}.npz",
                            labels=labels.numpy().astype(np.int8),
                            n_validation=len(work.labels("validation")),
                            float_classes=float_log_probs.argmax(dim=1).numpy().astype(np.int8),
                            classes=np.stack([c for c, _ in seen]),
                            kl=np.stack([k for _, k in seen]))
        print(f"{model} {setting} seed {seed} on {name}: {len(seen)} models recorded",
              flush=True)


# A rule: (correct, kl, best) -> keep? `correct` (n,) bool and `kl` (n,) of the candidate
# and of the best so far, on the images the guard sees.
def default_rule(cand, best) -> bool:
    return (cand[0].mean() >= best[0].mean()
            and cand[1].mean() < best[1].mean() * (1 - MIN_GAIN))


def halves_rule(cand, best) -> bool:
    """The default rule on each half of the guard's images separately."""
    n = len(cand[0]) // 2
    return all(default_rule((cand[0][s], cand[1][s]), (best[0][s], best[1][s]))
               for s in (slice(0, n), slice(n, None)))


def paired_rule(z: float):
    """The default rule, and images fixed minus images broken at least z standard deviations
    of that difference (sign test, normal approximation) above zero."""

    def rule(cand, best) -> bool:
        fixed = int((cand[0] & ~best[0]).sum())
        broken = int((~cand[0] & best[0]).sum())
        return default_rule(cand, best) and fixed - broken >= z * math.sqrt(fixed + broken)

    rule.__doc__ = f"paired, z = {z}"
    return rule


def kl_paired_rule(z: float):
    """The default rule, and the per-image KL drop at least z standard errors above zero (the
    repair's own test: AcceptanceConfig.min_z)."""
    from qnnrepair.repair.acceptance import significant_drop

    def rule(cand, best) -> bool:
        return default_rule(cand, best) and significant_drop(torch.from_numpy(best[1]),
                                                             torch.from_numpy(cand[1]), z)

    return rule


def margin_rule(min_gain: float, min_points: float):
    """KL down by `min_gain` (relative) and accuracy up by at least `min_points`."""

    def rule(cand, best) -> bool:
        return (100 * (cand[0].mean() - best[0].mean()) >= min_points
                and cand[1].mean() < best[1].mean() * (1 - min_gain))

    return rule


RULES = {"default (KL down 1 %, accuracy not down)": default_rule,
         "KL down 10 %, accuracy not down": margin_rule(0.10, 0.0),
         "KL down 1 %, accuracy up 0.3 point": margin_rule(MIN_GAIN, 0.3),
         "default on each half of V": halves_rule,
         "default + sign test z >= 1": paired_rule(1.0),
         "default + sign test z >= 2": paired_rule(2.0),
         "default + KL drop z >= 1": kl_paired_rule(1.0),
         "default + KL drop z >= 2": kl_paired_rule(2.0),
         "default + KL drop z >= 3": kl_paired_rule(3.0)}


def choose(rule, correct: np.ndarray, kl: np.ndarray, float_correct: np.ndarray,
           rows: np.ndarray) -> int:
    """The model the repair keeps under `rule` seeing only `rows`: 0 is the start, 1.. the
    candidates in order (each is compared with the best kept so far; as in the repair, none
    after the best reaches the float model's accuracy)."""
    best = 0
    for i in range(1, len(correct)):
        if correct[best, rows].mean() >= float_correct[rows].mean():
            break
        if rule((correct[i, rows], kl[i, rows]), (correct[best, rows], kl[best, rows])):
            best = i
    return best


def replay(paths: list[Path], output: Path) -> None:
    runs = sorted(paths)
    table: dict[str, dict[str, list]] = {name: {"cv": [], "t": []} for name in RULES}
    starts: list[str] = []
    details: dict[str, list] = {"v": [], "best": []}
    for path in runs:
        data = np.load(path)
        correct = data["classes"] == data["labels"][None, :]
        kl, n_v = data["kl"], int(data["n_validation"])
        float_correct = data["float_classes"] == data["labels"]
        v, t = np.arange(n_v), np.arange(n_v, correct.shape[1])
        a, b = v[: n_v // 2], v[n_v // 2:]
        starts.append(path.stem.rsplit("-", 1)[1])
        details["v"].append(100 * (correct[:, v].mean(axis=1) - correct[0, v].mean()))
        details["best"].append(100 * (correct[:, t].mean(axis=1) - correct[0, t].mean()).max())
        for name, rule in RULES.items():
            # gain over the start in points: on the half of V the guard did not see, both ways
            cv = np.mean([100 * (correct[choose(rule, correct, kl, float_correct, g), e].mean()
                                 - correct[0, e].mean()) for g, e in ((a, b), (b, a))])
            kept = choose(rule, correct, kl, float_correct, v)
            table[name]["cv"].append(cv)
            table[name]["t"].append((kept, 100 * (correct[kept, t].mean() - correct[0, t].mean())))

    lines = [f"# Acceptance rules replayed on recorded candidates", "",
             f"`{command()}`", "", f"Machine: {machine()}", "",
             f"{len(runs)} runs: {', '.join(p.stem for p in runs)}.", "",
             "Gain in points over the starting model (RTN for qnnrepair, AdaRound for "
             "AdaRound + qnnrepair). Chosen on: 'V halves', the mean gain on the half of V the "
             "guard did not see (both ways). Reported: T, with the guard on all of V; "
             "'T < start' counts runs that end below the starting model on T; 'kept' lists "
             "the kept model per run (0 the start, 1, 2, ... the candidates from the smallest, "
             "the top 1, 8, 64, ... neurons, to all of them).",
             ""]
    for start in sorted(set(starts)):
        idx = [i for i, s in enumerate(starts) if s == start]
        lines += [f"## on {start} ({len(idx)} runs)", "",
                  "| rule | V halves: mean gain | V halves: runs < 0 | T: mean gain | "
                  "T: runs < start | kept |", "|---|---|---|---|---|---|"]
        for name in RULES:
            cv = np.array(table[name]["cv"])[idx]
            kept = [table[name]["t"][i][0] for i in idx]
            t = np.array([table[name]["t"][i][1] for i in idx])
            lines.append(f"| {name} | {cv.mean():+.3f} | {(cv < 0).sum()} | {t.mean():+.3f} | "
                         f"{(t < 0).sum()} | {''.join(map(str, kept))} |")
        lines.append("")
    lines += ["## Per run, the default rule", "",
              "Gain in points over the start of the kept model on V (which the guard saw) and "
              "on T, and of the candidate best on T (for reference only).", "",
              "| run | kept | V | T | best on T |", "|---|---|---|---|---|"]
    for path, (kept, t_gain), v_gain, t_best in zip(runs, table[next(iter(RULES))]["t"],
                                                     details["v"], details["best"]):
        lines.append(f"| {path.stem} | {kept} | {v_gain[kept]:+.2f} | {t_gain:+.2f} | "
                     f"{t_best:+.2f} |")
    output.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--model", required=True)
    rec.add_argument("--setting", required=True)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--output", type=Path, default=RECORDS)
    rep = sub.add_parser("replay")
    rep.add_argument("records", nargs="+", type=Path)
    rep.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.action == "record":
        record(args.model, args.setting, args.seed, args.output)
    else:
        replay(args.records, args.output)


if __name__ == "__main__":
    sys.exit(main())
