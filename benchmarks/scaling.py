"""Scaling benchmark (DESIGN section 7): the repair's LPs on the local pool and on a Ray cluster
of 1, 2 and 4 simulated nodes on this machine, and a paper estimate for ImageNet models.

    python benchmarks/scaling.py                  # about 5-10 minutes on 2 cores
    python benchmarks/scaling.py --nodes 1 2      # fewer cluster sizes

Workload: ResNet-20 at W3A8 (the shared checkpoint), the default preset. R = 250 CIFAR-10
training images, not the bench's 1,000, so that the whole run (two local-pool and three
cluster repairs) stays under ten minutes; V = 500 images drawn from the test file. The LP set
for the throughput runs is the top-level LPs of 16 + 32 + 32 neurons of layer1.2.conv1 (144
weights), layer2.2.conv1 (288) and layer3.2.conv1 (576), built by the engine as in a repair.

Simulated nodes: ray.cluster_utils.Cluster on this machine. The head node (where this driver and
its object store live) has no CPUs, so every task runs on a worker node and fetches the problem
list from the head's store, as on a cluster whose driver runs on a login node. 1 node: 2 CPUs;
2 nodes: 1 CPU each; 4 nodes: 1 CPU each, i.e. 4 task slots on 2 cores (oversubscribed 2x: it
shows what more nodes cost, not a speedup). Writes benchmarks/results/scaling.md and scaling.png.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_SHARED, RESULTS, command, machine, workload

from qnnrepair.neurons import Neuron
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import LPConfig, Repairer, preset
from qnnrepair.repair.lp import LocalPool, NeuronProblem, RayPool
from qnnrepair.repair.lp.ray_backend import (
    MAX_BATCH,
    MIN_BATCH,
    TASKS_PER_SLOT,
    share_equal_arrays,
)

THROUGHPUT_NEURONS = {"layer1.2.conv1": 16, "layer2.2.conv1": 32, "layer3.2.conv1": 32}
NODE_CPUS = {1: [2], 2: [1, 1], 4: [1, 1, 1, 1]}
CORES_PER_NODE, BANDWIDTH_BPS = 16, 1.25e9  # paper estimate: 16-core nodes on 10 Gb/s Ethernet
# The current default's settings, read from it: at most this many rows in a hidden neuron's LP,
# and the geometric schedule's growth g, whose candidate sizes sum to at most g / (g - 1) x all.
_DEFAULT = preset("default")
HIDDEN_ROWS = _DEFAULT.lp.hidden_rows
SYNTHETIC_SIZES = (576, 1152, 2304, 4608)
SCHEDULE_FACTOR = _DEFAULT.acceptance.growth / (_DEFAULT.acceptance.growth - 1)


class Recorder:
    """A backend that passes calls on and keeps each call's problems."""

    def __init__(self, backend) -> None:
        self.backend, self.calls = backend, []

    def solve(self, problems):
        self.calls.append(list(problems))
        return self.backend.solve(problems)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def weights_of(problem) -> int:
    return int(np.asarray(problem.weight_int).size)


# ---------------------------------------------------------------- measurements

def repair(qmodel, work, backend, n_workers: int) -> dict:
    start = time.perf_counter()
    config = preset("default", n_workers=n_workers)
    fitted = Repairer(config, backend=backend).fit(
        qmodel, work.images("repair"), work.labels("repair"), work.images("validation"),
        work.labels("validation"))
    wall = time.perf_counter() - start
    state = fitted.repaired_.integer_state()
    return {"wall_s": wall, "loop_s": fitted.timings_["repair_loop"],
            "n_lps": sum(s.n_lps for s in fitted.steps_),
            "lp_seconds": sum(sum(s.lp_seconds) for s in fitted.steps_),
            "validation": fitted.validation_accuracy_["repaired"],
            "bytes": b"".join(v.numpy().tobytes() for v in state.values())}


def throughput(backend, problems) -> float:
    start = time.perf_counter()
    backend.solve(problems)
    return len(problems) / (time.perf_counter() - start)


def task_overhead(pool: RayPool, problems) -> dict:
    """Round trips of an empty task, and of the backend's task on an empty slice (the same
    plus unpickling the problem list on the worker): one at a time, and many in flight."""
    import ray

    @ray.remote(num_cpus=1)
    def empty():
        return None

    pool._connect()
    remote = pool._remote
    ref = ray.put(problems)
    slots = pool._slots(ray)
    ray.get([empty.remote() for _ in range(4 * slots)] +
            [remote.remote(ref, 0, 0) for _ in range(4 * slots)])  # warm every worker

    def timed(make, n: int, in_flight: bool) -> float:
        start = time.perf_counter()
        if in_flight:
            ray.get([make() for _ in range(n)])
        else:
            for _ in range(n):
                ray.get(make())
        return (time.perf_counter() - start) / n * 1e3

    return {"empty_rtt_ms": timed(empty.remote, 100, False),
            "empty_in_flight_ms": timed(empty.remote, 1000, True),
            "slice_rtt_ms": timed(lambda: remote.remote(ref, 0, 0), 50, False),
            "slice_in_flight_ms": timed(lambda: remote.remote(ref, 0, 0), 200, True)}


@contextlib.contextmanager
def simulated_cluster(node_cpus: list[int]):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for cpus in node_cpus:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---------------------------------------------------------------- paper estimate

def resnet50_layers() -> list[tuple[str, int, int]]:
    """(layer, neurons, weights J per neuron) of ResNet-50's convolutions (its hidden layers;
    the fc layer is the output layer, not repaired by default)."""
    layers, in_c = [("conv1", 64, 3 * 7 * 7)], 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], 1):
        for b in range(blocks):
            name = f"layer{stage}.{b}"
            layers += [(f"{name}.conv1", width, in_c), (f"{name}.conv2", width, 9 * width),
                       (f"{name}.conv3", 4 * width, width)]
            if b == 0:
                layers.append((f"{name}.downsample", 4 * width, in_c))
            in_c = 4 * width
    return layers


def mobilenetv2_layers() -> list[tuple[str, int, int]]:
    """The same for MobileNetV2 1.0 (224 x 224): stem, expand / depthwise / project, head."""
    layers, in_c = [("stem", 32, 27)], 32
    table = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    for i, (t, c, n) in enumerate(table):
        for b in range(n):
            hidden = in_c * t
            if t != 1:
                layers.append((f"block{i}.{b}.expand", hidden, in_c))
            layers += [(f"block{i}.{b}.depthwise", hidden, 9), (f"block{i}.{b}.project", c, hidden)]
            in_c = c
    return layers + [("head", 1280, 320)]


def synthetic_problem(j: int, seed: int = 0) -> NeuronProblem:
    """A "match" LP with J weights and HIDDEN_ROWS rows like a summary's (random directions,
    decaying scales), weights free between floor and ceiling, default time limit: to see how the
    LP's time grows past the largest fan-in ResNet-20 has (576)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(HIDDEN_ROWS, j)) * np.linspace(1, 0.05, HIDDEN_ROWS)[:, None] * 0.05
    weight = rng.integers(-3, 4, j)
    rounding = weight + rng.uniform(-0.5, 0.5, j)
    bounds = (np.floor(rounding) - weight, np.ceil(rounding) - weight)
    return NeuronProblem(rows, 0.02 * (rows @ rounding), weight, 0.02, 0.0, -3, 3,
                         delta_bounds=bounds, fit_bias=False, max_rows=HIDDEN_ROWS,
                         bias_from=(np.zeros(j), 0.0), time_limit=LPConfig().time_limit)


def lp_time_model(sizes: np.ndarray, seconds: np.ndarray, synthetic: dict[int, float]):
    """Seconds of one LP with J weights: up to the largest J measured on real LPs, log-log
    interpolation of their mean per J (their smallest mean below); past it, that mean scaled as
    the synthetic LPs grow (log-log, the last segment's slope past the largest); at most the
    LPs' time limit (HiGHS stops there and the best point found is kept)."""
    real = sorted({int(j): float(seconds[sizes == j].mean()) for j in set(sizes.tolist())}
                  .items())
    real_j, real_t = np.log([j for j, _ in real]), np.log([t for _, t in real])
    syn_j, syn_t = np.log(sorted(synthetic)), np.log([synthetic[j] for j in sorted(synthetic)])
    slope = (syn_t[-1] - syn_t[-2]) / (syn_j[-1] - syn_j[-2])
    limit = LPConfig().time_limit or math.inf

    def synth(log_j: float) -> float:
        if log_j <= syn_j[-1]:
            return float(np.interp(log_j, syn_j, syn_t))
        return float(syn_t[-1] + slope * (log_j - syn_j[-1]))

    def lp_seconds(j: int) -> float:
        log_j = math.log(j)
        if log_j <= real_j[-1]:
            return math.exp(float(np.interp(log_j, real_j, real_t)))
        return min(limit, math.exp(real_t[-1] + synth(log_j) - synth(real_j[-1])))

    return lp_seconds


def bytes_model(calls, call_bytes):
    """Bytes of one call's problem list as a function of (LPs n, weights J): the layer's summary
    rows once (min(HIDDEN_ROWS, J) x J doubles: a summary has at most J directions) plus n times
    a per-LP part linear in J, fitted on the measured calls (one per layer, so one J each)."""
    rows_bytes = [c[0].inputs.nbytes for c in calls]
    per_lp = [(b - r) / len(c) for c, b, r in zip(calls, call_bytes, rows_bytes)]
    slope, intercept = np.polyfit([weights_of(c[0]) for c in calls], per_lp, 1)

    def size(n: int, j: int) -> float:
        # a depthwise layer (J = 9 here) has one group, and so one set of rows, per neuron
        rows = min(HIDDEN_ROWS, j) * 8 * j
        return rows * (n if j == 9 else 1) + n * (intercept + slope * j)

    return size, slope, intercept


def estimate(layers, lp_seconds, n_nodes: int, overhead_s: float, call_size) -> dict:
    """One candidate repairing every hidden neuron, layer after layer (a layer's LPs need the
    repaired layers before it): each layer takes ceil(LPs / slots) waves of its LP time, plus
    the task overhead of its waves and the transfer of its problem list to every node that
    runs a task of it."""
    slots = n_nodes * CORES_PER_NODE
    wall = cpu = 0.0
    for _, n, j in layers:
        t = lp_seconds(j)
        cpu += n * t
        wall += math.ceil(n / slots) * (t + overhead_s)
        wall += call_size(n, j) * min(n_nodes, n) / BANDWIDTH_BPS
    return {"cpu_h": cpu * SCHEDULE_FACTOR / 3600, "wall_min": wall * SCHEDULE_FACTOR / 60}


# ---------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--n-repair", type=int, default=250)
    parser.add_argument("--n-validation", type=int, default=500)
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 4], choices=NODE_CPUS)
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder for scaling.md and scaling.png")
    parser.add_argument("--throughput-scale", type=float, default=1.0,
                        help="fraction of the throughput set's neurons (a smoke test: 0.25)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start, started = uptime(), time.perf_counter()

    work = workload("resnet20", args.shared, n_repair=args.n_repair,
                    n_validation=args.n_validation)
    qmodel = quantize(work.model, QuantConfig.from_setting("w3a8"), work.images("repair"))
    recorder = Recorder(LocalPool(1))
    neurons = [Neuron(layer, i) for layer, n in THROUGHPUT_NEURONS.items()
               for i in range(max(1, round(n * args.throughput_scale)))]
    Repairer(preset("default"), backend=recorder).repair_neurons(
        qmodel, neurons, work.images("repair"), work.labels("repair"))
    problems = [p for call in recorder.calls for p in call]

    # per-LP cost, one at a time in this process (no pool, no Ray)
    sizes, seconds = [], []
    for p in problems:
        start = time.perf_counter()
        p.solve()
        seconds.append(time.perf_counter() - start)
        sizes.append(weights_of(p))
    sizes, seconds = np.array(sizes), np.array(seconds)
    synthetic = {}
    for j in SYNTHETIC_SIZES:
        problem = synthetic_problem(j)
        start = time.perf_counter()
        problem.solve()
        synthetic[j] = time.perf_counter() - start
    call_bytes = [len(pickle.dumps(share_equal_arrays(call), protocol=5))
                  for call in recorder.calls]
    per_problem_bytes = [sum(len(pickle.dumps(p, protocol=5)) for p in call)
                         for call in recorder.calls]

    rows = []
    reference = None
    for n_workers in (1, 2):
        pool = LocalPool(n_workers)
        throughput(pool, problems[:4])
        row = {"backend": f"local pool, {n_workers} process{'es' if n_workers > 1 else ''}",
               "nodes": "-", "slots": n_workers, "lps": throughput(pool, problems)}
        row |= repair(qmodel, work, pool, n_workers)
        reference = reference or row["bytes"]
        rows.append(row)

    for n_nodes in args.nodes:
        node_cpus = NODE_CPUS[n_nodes]
        with simulated_cluster(node_cpus):
            pool = RayPool(n_workers=sum(node_cpus))
            row = {"backend": "ray", "nodes": f"{n_nodes} x {node_cpus[0]} CPU",
                   "slots": sum(node_cpus)}
            row |= task_overhead(pool, problems)
            throughput(pool, problems[:8])
            row["lps_batch1"] = throughput(RayPool(batch_size=1), problems)
            put, tasks = pool.stats_["put_bytes"], pool.stats_["tasks"]
            row["lps"] = throughput(pool, problems)
            row["tasks"] = pool.stats_["tasks"] - tasks
            row["put_mb"] = (pool.stats_["put_bytes"] - put) / 1e6
            put = pool.stats_["put_bytes"]
            row |= repair(qmodel, work, pool, sum(node_cpus))
            row["repair_put_mb"] = (pool.stats_["put_bytes"] - put) / 1e6
        rows.append(row)
    for row in rows:
        row["identical"] = row.pop("bytes") == reference

    elapsed = time.perf_counter() - started
    load_end = uptime()
    text = render(args, rows, sizes, seconds, synthetic, recorder.calls, call_bytes,
                  per_problem_bytes, load_start, load_end, elapsed)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "scaling.md").write_text(text)
    plot(rows, args.results / "scaling.png")
    print(text)


def render(args, rows, sizes, seconds, synthetic, calls, call_bytes, per_problem_bytes,
           load_start, load_end, elapsed) -> str:
    lines = ["# Scaling: the repair's LPs on the local pool and on Ray", "",
             f"Command: `{command()}`", "", f"Machine: {machine()}", "",
             f"Load: at start `{load_start}`; at end `{load_end}` (the machine is shared: "
             "timings are upper bounds, and only rows of this run compare).", "",
             f"Whole run: {elapsed:.0f} s. Workload: ResNet-20 W3A8, default preset, "
             f"R = {args.n_repair} CIFAR-10 training images (250, not 1,000, to keep the run "
             f"under ten minutes), V = {args.n_validation}.", ""]

    lines += ["## Per-LP cost (one at a time, in process)", "",
              "| weights J | LPs | mean s | min s | max s |", "|---:|---:|---:|---:|---:|"]
    for j in sorted(set(sizes.tolist())):
        s = seconds[sizes == j]
        lines.append(f"| {j} | {len(s)} | {s.mean():.3f} | {s.min():.3f} | {s.max():.3f} |")
    lines += ["", f"Synthetic \"match\" LPs with {HIDDEN_ROWS} rows (random summary-like "
              "rows), for the growth past J = 576:", "", "| weights J | seconds |", "|---:|---:|"]
    lines += [f"| {j} | {t:.3f} |" for j, t in synthetic.items()]
    lp_seconds = lp_time_model(sizes, seconds, synthetic)
    lines.append("")

    n_lps = sum(len(c) for c in calls)
    call_size, per_weight, per_lp_fixed = bytes_model(calls, call_bytes)
    lines += ["## Object-store traffic", "",
              f"The throughput set is {len(calls)} calls (one per layer), {n_lps} LPs. "
              f"One ray.put per call: {sum(call_bytes) / 1e6:.2f} MB in all "
              f"({sum(call_bytes) / n_lps / 1e3:.1f} kB per LP), fetched at most once by each "
              "node that runs a task of the call; each task's own arguments are the reference "
              "and two integers (well under 1 kB). A process pool pickles every problem on its "
              f"own, the layer's shared rows each time: {sum(per_problem_bytes) / 1e6:.2f} MB "
              "for the same LPs.", "",
              f"Model of a call's bytes (used below): min({HIDDEN_ROWS}, J) x J x 8 for the "
              f"layer's rows, plus {per_lp_fixed:.0f} + {per_weight:.1f} x J per LP.", "",
              "| layer call | LPs | J | put MB | model MB | process pool MB |",
              "|---|---:|---:|---:|---:|---:|"]
    for call, size, pool_size in zip(calls, call_bytes, per_problem_bytes):
        j = weights_of(call[0])
        lines.append(f"| {j}-weight layer | {len(call)} | {j} | {size / 1e6:.3f} | "
                     f"{call_size(len(call), j) / 1e6:.3f} | {pool_size / 1e6:.3f} |")
    lines.append("")

    lines += ["## Per-task overhead and throughput", "",
              "Round trips in ms: an empty task, and the backend's task on an empty slice "
              "(which also unpickles the whole problem list: "
              f"{n_lps} LPs), one at a time and per task with many in flight. LP throughput on "
              f"the {n_lps}-LP set: automatic batches ({MIN_BATCH}-{MAX_BATCH} LPs, "
              f"{TASKS_PER_SLOT} tasks per slot) and one LP per task. Repair: the whole default "
              "repair (localization, LPs, validation); LP s = seconds inside HiGHS summed over "
              "the LPs; identical = the repaired integers are byte-identical to the local "
              "pool's.", "",
              "| backend | nodes | slots | empty rtt | empty in flight | slice rtt | slice in "
              "flight | LPs/s | LPs/s batch 1 | tasks | put MB | repair s | loop s | LPs | LP s "
              "| repair put MB | val % | identical |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
              "---:|---|"]

    def f(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['nodes']} | {r['slots']} | {f(r, 'empty_rtt_ms', '.2f')} | "
            f"{f(r, 'empty_in_flight_ms', '.2f')} | {f(r, 'slice_rtt_ms', '.2f')} | "
            f"{f(r, 'slice_in_flight_ms', '.2f')} | {r['lps']:.1f} | "
            f"{f(r, 'lps_batch1', '.1f')} | {f(r, 'tasks', '.0f')} | {f(r, 'put_mb', '.2f')} | "
            f"{r['wall_s']:.1f} | {r['loop_s']:.1f} | {r['n_lps']} | {r['lp_seconds']:.1f} | "
            f"{f(r, 'repair_put_mb', '.2f')} | {r['validation']:.2f} | "
            f"{'yes' if r['identical'] else 'NO'} |")

    ray_rows = [r for r in rows if "slice_in_flight_ms" in r]
    overhead_s = max((r["slice_in_flight_ms"] for r in ray_rows), default=5.0) / 1e3
    lines += ["", "## Paper estimate: ImageNet models on 16-core nodes", "",
              "Assumptions: every hidden neuron gets one LP of its own weights J plus "
              f"{HIDDEN_ROWS} summary rows (the default hidden_rows, the same whatever the input "
              "size, so "
              "ImageNet inputs change the LP only through J); LP time per J from the real LPs "
              f"above up to J = {sizes.max()}, scaled past it as the synthetic LPs grow, capped "
              f"at the LPs' {LPConfig().time_limit:g} s time limit (the large layers are the "
              "least certain); layers are repaired one after another "
              "and a layer's LPs run in ceil(LPs / slots) waves; each wave pays the largest "
              f"measured per-task overhead ({overhead_s * 1e3:.1f} ms); each layer's problem "
              "list (the bytes model above) goes to every node, one after another, at "
              f"{BANDWIDTH_BPS * 8 / 1e9:.0f} Gb/s from the driver; the geometric schedule "
              f"multiplies all by {SCHEDULE_FACTOR:.2f} (the sum of candidate sizes, no cache "
              "hits: an upper bound). Not counted: the driver's activation recording and "
              "validation passes on ImageNet images, which stay on the driver.", "",
              "| model | hidden neurons | largest J | LP CPU-minutes | 8 nodes (128 cores) s "
              "| 32 nodes (512 cores) s |", "|---|---:|---:|---:|---:|---:|"]
    for name, layers in (("ResNet-50", resnet50_layers()), ("MobileNetV2", mobilenetv2_layers())):
        eight, many = (estimate(layers, lp_seconds, n, overhead_s, call_size) for n in (8, 32))
        lines.append(f"| {name} | {sum(n for _, n, _ in layers):,} | "
                     f"{max(j for _, _, j in layers):,} | {eight['cpu_h'] * 60:.1f} | "
                     f"{eight['wall_min'] * 60:.0f} | {many['wall_min'] * 60:.0f} |")
    lines += ["", "LP seconds per J used: " + ", ".join(
        f"{j}: {lp_seconds(j):.3f}" for j in (9, 64, 147, 576, 1152, 2304, 4608)) + "."]
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["backend"].replace("local pool, ", "local ") +
              (f"\n{r['nodes']}" if r["nodes"] != "-" else "") for r in rows]
    x = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(x - 0.2, [r["lps"] for r in rows], 0.4, label="automatic batches")
    left.bar(x + 0.2, [r.get("lps_batch1", np.nan) for r in rows], 0.4, label="1 LP per task")
    left.set_ylabel("LPs per second")
    left.set_title("LP throughput (ResNet-20 W3A8 LPs)")
    left.legend()
    right.bar(x, [r["wall_s"] for r in rows], 0.6, color="tab:gray")
    right.set_ylabel("seconds")
    right.set_title("whole repair, wall clock")
    for ax in (left, right):
        ax.set_xticks(x, labels, fontsize=8)
    fig.text(0.5, 0.01, "2-core machine; Ray nodes simulated on it (4 x 1 CPU oversubscribes)",
             ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
