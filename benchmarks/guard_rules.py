"""Which acceptance rule to keep: every candidate of the default repair, recorded, and rules
replayed on the records.

The default repair builds every candidate from the starting model (candidates: the top 1, 8,
64, ... hidden neurons and all of them), so its candidates do not depend on which ones the
guard keeps.
`record` runs the bench's splits (R = 1,000 training images, V = 1,000 images of the test file,
T = the other 9,000) for qnnrepair on RTN and on AdaRound, and saves each candidate's
predicted class and per-image KL(float || candidate) on V and T (`.npz`, one per run).
`replay` applies each rule of RULES to the records in two ways:

- on V only, which is how the rule is chosen: the guard sees one half of V, the other half
  scores its choice, and the halves swap (the rule then works on 500 images, not 1,000);
- on all of V, as the repair runs, scored on T (reported, not used to choose).

    python guard_rules.py record --model resnet20 --setting w4a4 --seed 0
    python guard_rules.py replay --output results/experiments/guard_rules.md
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

from qnnrepair.repair.acceptance import Score, keeps

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
def library_rule(min_gain: float, min_z: float = 0.0):
    """The repair's own decision (repair.acceptance.keeps) with these settings."""

    def rule(cand, best) -> bool:
        return keeps(_score(*cand), _score(*best), True, "kl", min_gain, min_z)

    return rule


def _score(correct: np.ndarray, kl: np.ndarray) -> Score:
    per_image = torch.from_numpy(kl).double()
    return Score(100.0 * correct.mean(), per_image.mean().item(), per_image)


default_rule = library_rule(MIN_GAIN)


def halves_rule(cand, best) -> bool:
    """The default rule on each half of the guard's images separately."""
    n = len(cand[0]) // 2
    return all(default_rule((cand[0][s], cand[1][s]), (best[0][s], best[1][s]))
               for s in (slice(0, n), slice(n, None)))


def sign_test_rule(z: float):
    """The default rule, and images fixed minus images broken at least z standard deviations
    of that difference (sign test, normal approximation) above zero."""

    def rule(cand, best) -> bool:
        fixed = int((cand[0] & ~best[0]).sum())
        broken = int((~cand[0] & best[0]).sum())
        return default_rule(cand, best) and fixed - broken >= z * math.sqrt(fixed + broken)

    return rule


def accuracy_margin_rule(points: float):
    """The default rule, and accuracy up by at least `points`."""

    def rule(cand, best) -> bool:
        return default_rule(cand, best) and 100 * (cand[0].mean() - best[0].mean()) >= points

    return rule


RULES = {"default (KL down 1 %, accuracy not down)": default_rule,
         "KL down 10 %, accuracy not down": library_rule(0.10),
         "KL down 1 %, accuracy up 0.3 point": accuracy_margin_rule(0.3),
         "default on each half of V": halves_rule,
         "default + sign test z >= 1": sign_test_rule(1.0),
         "default + sign test z >= 2": sign_test_rule(2.0),
         "default + KL drop z >= 1": library_rule(MIN_GAIN, 1.0),
         "default + KL drop z >= 2": library_rule(MIN_GAIN, 2.0),
         "default + KL drop z >= 3": library_rule(MIN_GAIN, 3.0)}


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


def replay(folder: Path, output: Path) -> None:
    runs = sorted(folder.glob("*.npz"))
    if not runs:
        raise SystemExit(f"no records (*.npz) in {folder}: run `guard_rules.py record` first")
    records = [_replayed(path) for path in runs]
    starts = sorted({r["start"] for r in records})
    chosen = pick(records)
    lines = ["# Acceptance rules replayed on recorded candidates", "",
             f"`{command()}` ({len(runs)} records: ResNet-20 and ResNet-32, W4A8, W3A8, W4A4, "
             "seeds 0 to 2 of the splits, qnnrepair's default on RTN and on AdaRound, recorded "
             "by `guard_rules.py record`)", "", f"Machine: {machine()}", "",
             "Gain in points over the starting model (RTN for qnnrepair, AdaRound for "
             "AdaRound + qnnrepair). Chosen on 'V halves': the mean gain on the half of V the "
             "guard did not see (both ways). Reported: T, with the guard on all of V; "
             "'T < start' counts runs that end below the starting model on T; 'kept' lists "
             "the kept model per run (0 the start, 1, 2, ... the candidates from the smallest, "
             "the top 1, 8, 64, ... neurons, to all of them).", "",
             f"The rule chosen on V ({PICK}): **{chosen}**.", ""]
    for start in starts:
        mine = [r for r in records if r["start"] == start]
        lines += [f"## on {start} ({len(mine)} runs)", "",
                  "| rule | V halves: mean gain | V halves: runs < 0 | T: mean gain | "
                  "T: runs < start | kept |", "|---|---|---|---|---|---|"]
        for name in RULES:
            cv = np.array([r["cv"][name] for r in mine])
            t = np.array([r["t"][name] for r in mine])
            kept = "".join(str(r["kept"][name]) for r in mine)
            lines.append(f"| {name} | {cv.mean():+.3f} | {(cv < 0).sum()} | {t.mean():+.3f} | "
                         f"{(t < 0).sum()} | {kept} |")
        lines.append("")
    lines += _cells(records, chosen)
    lines += _hindsight(records)
    lines += ["## Per run, the default rule", "",
              "Gain in points over the start of the kept model on V (which the guard saw) and "
              "on T, and of the candidate best on T (for reference only).", "",
              "| run | kept | V | T | best on T |", "|---|---|---|---|---|"]
    for r in records:
        kept = r["kept"][DEFAULT]
        lines.append(f"| {r['name']} | {kept} | {r['v_gain'][kept]:+.2f} | "
                     f"{r['t'][DEFAULT]:+.2f} | {r['t_best']:+.2f} |")
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _hindsight(records: list[dict]) -> list[str]:
    """Per bench cell, mean T accuracy over the seeds of the start and of the candidate best on
    T (chosen with hindsight, for reference only): what no acceptance rule can exceed."""
    lines = ["## Per bench cell: the best candidate on T, in hindsight", "",
             "Mean T accuracy over the seeds: the start, and the candidate best on T in each "
             "run (for reference only: no rule that sees only V can keep more).", "",
             "| cell | RTN | best from RTN | AdaRound | best from AdaRound |",
             "|---|---|---|---|---|"]
    for cell in dict.fromkeys(r["cell"] for r in records):
        cells = []
        for start in ("rtn", "adaround"):
            mine = [r for r in records if r["cell"] == cell and r["start"] == start]
            cells += [f"{np.mean([r['t_start'] for r in mine]):.2f}",
                      f"{np.mean([r['t_start'] + r['t_best'] for r in mine]):.2f}"]
        lines.append(f"| {cell} | " + " | ".join(cells) + " |")
    return lines + [""]


DEFAULT = next(iter(RULES))
PICK = ("the highest mean gain on the unseen half of V on AdaRound's start, at least 0.1 point "
        "above the default's, with no more runs below zero, and not below the default's on "
        "RTN's start; else the default")


def pick(records: list[dict]) -> str:
    """The rule chosen on V alone, by the rule PICK states (set before the records were in)."""

    def cv(name: str, start: str) -> np.ndarray:
        return np.array([r["cv"][name] for r in records if r["start"] == start])

    base_ada, base_rtn = cv(DEFAULT, "adaround"), cv(DEFAULT, "rtn")
    fits = [name for name in RULES
            if cv(name, "adaround").mean() >= base_ada.mean() + 0.1
            and (cv(name, "adaround") < 0).sum() <= (base_ada < 0).sum()
            and cv(name, "rtn").mean() >= base_rtn.mean()]
    return max(fits, key=lambda name: cv(name, "adaround").mean(), default=DEFAULT)


def _replayed(path: Path) -> dict:
    """One record: every rule's choice, on V's halves and on all of V."""
    data = np.load(path)
    correct = data["classes"] == data["labels"][None, :]
    kl, n_v = data["kl"], int(data["n_validation"])
    float_correct = data["float_classes"] == data["labels"]
    v, t = np.arange(n_v), np.arange(n_v, correct.shape[1])
    a, b = v[: n_v // 2], v[n_v // 2:]
    name = path.stem
    record = {"name": name, "cell": name.rsplit("-", 2)[0], "start": name.rsplit("-", 1)[1],
              "v_gain": 100 * (correct[:, v].mean(axis=1) - correct[0, v].mean()),
              "t_start": 100 * correct[0, t].mean(),
              "t_best": 100 * (correct[:, t].mean(axis=1) - correct[0, t].mean()).max(),
              "cv": {}, "t": {}, "kept": {}}
    for rule_name, rule in RULES.items():
        # gain over the start in points on the half of V the guard did not see, both ways
        record["cv"][rule_name] = np.mean(
            [100 * (correct[choose(rule, correct, kl, float_correct, g), e].mean()
                    - correct[0, e].mean()) for g, e in ((a, b), (b, a))])
        kept = choose(rule, correct, kl, float_correct, v)
        record["kept"][rule_name] = kept
        record["t"][rule_name] = 100 * (correct[kept, t].mean() - correct[0, t].mean())
    return record


def _cells(records: list[dict], chosen: str) -> list[str]:
    """Test accuracy per bench cell (mean over seeds) with the default rule and the chosen."""
    lines = [f"## Per bench cell: T accuracy, mean over seeds, default rule -> {chosen}", "",
             "| cell | AdaRound | qnnrepair | AdaRound + qnnrepair | AdaRound + qnnrepair "
             "minus AdaRound, per seed |", "|---|---|---|---|---|"]
    for cell in sorted({r["cell"] for r in records}):
        rtn = [r for r in records if r["cell"] == cell and r["start"] == "rtn"]
        ada = [r for r in records if r["cell"] == cell and r["start"] == "adaround"]
        if not rtn or not ada:
            continue
        ada_t = np.mean([r["t_start"] for r in ada])

        def mean(runs, rule):
            return np.mean([r["t_start"] + r["t"][rule] for r in runs])

        per_seed = ", ".join(f"{r['t'][DEFAULT]:+.2f} -> {r['t'][chosen]:+.2f}" for r in ada)
        lines.append(f"| {cell} | {ada_t:.2f} | {mean(rtn, DEFAULT):.2f} -> "
                     f"{mean(rtn, chosen):.2f} | {mean(ada, DEFAULT):.2f} -> "
                     f"{mean(ada, chosen):.2f} | {per_seed} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--model", required=True)
    rec.add_argument("--setting", required=True)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--output", type=Path, default=RECORDS)
    rep = sub.add_parser("replay")
    rep.add_argument("records", nargs="?", type=Path, default=RECORDS,
                     help="the folder of records (default: %(default)s)")
    rep.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.action == "record":
        record(args.model, args.setting, args.seed, args.output)
    else:
        replay(args.records, args.output)


if __name__ == "__main__":
    sys.exit(main())
