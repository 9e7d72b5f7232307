"""The Ray LP backend: the same bytes as the local pool, retries of killed workers, one-line
errors. One local Ray (2 CPUs) serves the whole module; skipped if Ray is missing or will not
start."""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from qnnrepair.errors import QnnRepairError
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.lp import LocalPool, NeuronProblem, RayPool, make_backend
from qnnrepair.repair.lp.ray_backend import (
    MAX_BATCH,
    MIN_BATCH,
    batch_bounds,
    share_equal_arrays,
)
from qnnrepair.testing import TINY_MODEL_SPEC, blob_data, trained_tiny_net, write_tiny_task


def tiny_case(seed: int = 7):
    """A trained tiny net at W2A4 (broken enough to repair), repair and validation sets."""
    model = trained_tiny_net(seed=seed % 3)
    images, labels = blob_data(300, seed=seed)
    qmodel = quantize(model, QuantConfig.from_setting("w2a4", first_last_bits=None), images[:150])
    return qmodel, images[:150], labels[:150], images[150:], labels[150:]


def repaired_state(backend, seed: int = 7) -> dict[str, np.ndarray]:
    """The integers of the repaired model, and of the top-16 neurons' candidate (which the
    tiny repair may reject, but whose LPs change integers), and each step's validation."""
    qmodel, r_x, r_y, v_x, v_y = tiny_case(seed)
    config = preset("default", n_workers=2, max_rows=200, seed=seed)
    repairer = Repairer(config, backend=backend).fit(qmodel, r_x, r_y, v_x, v_y)
    candidate, changes, _ = repairer.repair_neurons(qmodel, repairer.ranking_[:16], r_x, r_y)
    assert changes, "the top-16 candidate changed nothing: the comparison would be empty"
    state = {f"repaired {k}": v.numpy() for k, v in repairer.repaired_.integer_state().items()}
    state |= {f"candidate {k}": v.numpy() for k, v in candidate.integer_state().items()}
    state["validation"] = np.array([s.validation_accuracy for s in repairer.steps_])
    return state


def tiny_problem(seed: int = 0) -> NeuronProblem:
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(40, 12))
    weight = rng.integers(-3, 4, 12)
    target = 0.1 * (inputs @ (weight + rng.integers(-1, 2, 12))) + 0.05
    return NeuronProblem(inputs, target, weight, 0.1, 0.0, -7, 7)


@dataclass(frozen=True)
class DiesOnce:
    """Kills the worker that solves it, the first time only (a file marks that it died)."""

    marker: str
    problem: NeuronProblem

    def solve(self):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.problem.solve()


@dataclass(frozen=True)
class AlwaysDies:
    def solve(self):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class BadInput:
    def solve(self):
        raise QnnRepairError("inputs must be (N, J): a problem's own error")


@pytest.fixture(scope="module")
def local_states():
    """The local pool's answers, computed before Ray starts (its pool forks this process)."""
    return {n: repaired_state(LocalPool(n_workers=n)) for n in (1, 2)}


@pytest.fixture(scope="module")
def ray_session(local_states):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'qnnrepair[ray]'")
    from ray import cloudpickle

    # Workers cannot import this test module: send its problem classes by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    except Exception as err:  # no shared memory, no free ports, ...
        pytest.skip(f"a local Ray with 2 CPUs would not start: {err}")
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_batches_cover_every_problem_once_in_order():
    for n_problems in (0, 1, 3, 7, 64, 1000):
        for n_slots in (1, 2, 8, 64):
            bounds = batch_bounds(n_problems, n_slots)
            assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n_problems))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes, default=0) <= MAX_BATCH
            if n_problems >= MIN_BATCH * n_slots:
                assert min(sizes[:-1], default=MIN_BATCH) >= MIN_BATCH, (n_problems, n_slots)
            if n_problems >= n_slots:
                assert len(bounds) >= n_slots, f"{n_problems} LPs left slots idle: {bounds}"
    assert batch_bounds(10, 2, batch_size=3) == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_equal_arrays_are_shared_and_values_kept():
    rows = np.random.default_rng(0).normal(size=(64, 32))
    problems = [NeuronProblem(rows.copy(), np.full(64, float(i)), np.zeros(32, int), 0.1, 0.0,
                              -3, 3) for i in range(8)]
    shared = share_equal_arrays(problems)
    assert all(p.inputs is shared[0].inputs for p in shared), "equal rows were not shared"
    assert len({id(p.target) for p in shared}) == 8, "different targets were merged"
    for before, after in zip(problems, shared):
        for name in ("inputs", "target", "weight_int"):
            assert getattr(before, name).tobytes() == getattr(after, name).tobytes()
    size, shared_size = (len(pickle.dumps(p, protocol=5)) for p in (problems, shared))
    print(f"pickled {size} -> {shared_size} bytes")
    assert shared_size < size / 4


def test_local_pool_sizes_agree(local_states):
    one, two = local_states[1], local_states[2]
    for key in one:
        assert one[key].tobytes() == two[key].tobytes(), f"{key}: 1 vs 2 local workers differ"


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_ray_repair_is_byte_identical_to_the_local_pool(ray_session, local_states, batch_size):
    state = repaired_state(RayPool(n_workers=2, batch_size=batch_size))
    reference = local_states[2]
    assert state.keys() == reference.keys()
    for key in reference:
        ours, theirs = state[key], reference[key]
        assert ours.tobytes() == theirs.tobytes(), (
            f"{key}: {int((ours != theirs).sum())} integers differ from the local pool")


def test_ray_backend_by_name_from_the_config(ray_session):
    backend = make_backend("ray", n_workers=2)
    problems = [tiny_problem(s) for s in range(9)]
    got = backend.solve(problems)
    for problem, result in zip(problems, got):
        expected = problem.solve()
        assert np.array_equal(result.delta_weight, expected.delta_weight)
        assert result.objective_rounded == expected.objective_rounded
        result.delta_weight[0] += 0  # the caller's arrays are writable, as from a local pool
    assert backend.stats_["tasks"] >= 2


def test_a_killed_worker_is_retried(ray_session, tmp_path):
    problems = [tiny_problem(s) for s in range(6)]
    dies = DiesOnce(str(tmp_path / "died"), problems[2])
    got = RayPool(n_workers=2, batch_size=2).solve(problems[:2] + [dies] + problems[3:])
    assert (tmp_path / "died").exists(), "the worker was never killed: the test tests nothing"
    for problem, result in zip(problems, got):
        assert np.array_equal(result.delta_weight, problem.solve().delta_weight)


def test_a_worker_that_always_dies_stops_with_one_line(ray_session):
    pool = RayPool(n_workers=2, batch_size=1, max_retries=1)
    with pytest.raises(QnnRepairError) as info:
        pool.solve([tiny_problem(0), AlwaysDies(), tiny_problem(1)])
    message = str(info.value)
    print(message)
    assert "\n" not in message and "after 1 retries" in message


def test_a_problem_error_reaches_the_caller_unchanged(ray_session):
    with pytest.raises(QnnRepairError, match="a problem's own error"):
        RayPool(n_workers=2).solve([tiny_problem(0), BadInput()])


def test_cli_backend_ray_writes_the_local_pools_integers(ray_session, tmp_path, capsys):
    """`qnnrepair repair --backend ray` (on this module's Ray) against `--backend local`."""
    from qnnrepair.cli import main
    from qnnrepair.quantization import load_quantized

    write_tiny_task(tmp_path)
    states = {}
    for backend in ("local", "ray"):
        output = tmp_path / f"{backend}.qnn"
        code = main(["--no-progress", "repair", "--model", TINY_MODEL_SPEC, "--weights",
                     str(tmp_path / "weights.pt"), "--data", str(tmp_path / "data.npz"),
                     "--n-repair", "100", "--n-validation", "100", "--setting", "w2a4",
                     "--workers", "2", "--backend", backend, "--output", str(output)])
        assert code == 0, capsys.readouterr()
        report = json.loads((tmp_path / f"{backend}.report.json").read_text())
        assert report["repair_config"]["execution"]["backend"] == backend
        assert report["changes"], "the tiny CLI repair changed nothing: nothing is compared"
        states[backend] = load_quantized(output).integer_state()
    for key, value in states["local"].items():
        assert value.numpy().tobytes() == states["ray"][key].numpy().tobytes(), key


def test_cli_ray_address_unreachable_is_one_line_naming_it_and_writes_nothing(tmp_path):
    """`qnnrepair repair --ray-address` in a fresh process (this one may have a Ray running)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'qnnrepair[ray]'")
    write_tiny_task(tmp_path)
    output = tmp_path / "repaired.qnn"
    argv = ["--no-progress", "repair", "--model", TINY_MODEL_SPEC, "--weights",
            str(tmp_path / "weights.pt"), "--data", str(tmp_path / "data.npz"), "--n-repair",
            "100", "--n-validation", "100", "--setting", "w2a4", "--workers", "1", "--ray-address",
            "127.0.0.1:1", "--output", str(output)]
    code = "import sys; from qnnrepair.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    print(f"{seconds:.1f} s: {lines}")
    assert done.returncode == 2, done.stderr
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and errors[0].startswith(
        "qnnrepair: error: cannot reach the Ray cluster at 127.0.0.1:1"), lines
    assert not list(tmp_path.glob("repaired*")), "a failed repair wrote files"


JOIN_SCRIPT = """
import sys
import numpy as np
from ray.cluster_utils import Cluster
from qnnrepair.repair.lp import RayPool, NeuronProblem

rng = np.random.default_rng(0)
problems = [NeuronProblem(rng.normal(size=(30, 8)), rng.normal(size=30), np.zeros(8, int), 0.1,
                          0.0, -3, 3) for _ in range(5)]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
try:
    pool = RayPool(n_workers=1, address=cluster.address, connect_timeout_s=60)
    got = pool.solve(problems)
    same = all(np.array_equal(g.delta_weight, p.solve().delta_weight)
               for g, p in zip(got, problems))
    print("joined", cluster.address, same, pool._started)
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_joins_a_running_cluster_by_address():
    """A cluster started apart from the backend (in a fresh process: this one has a Ray)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'qnnrepair[ray]'")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", JOIN_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=180)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    print(lines[-1])
    assert lines[-1].startswith("joined") and lines[-1].endswith("True False"), lines[-1]


def test_a_port_where_ray_does_not_answer_fails_within_the_timeout():
    """Something listens but is not Ray: Ray alone would retry for minutes."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'qnnrepair[ray]'")
    with socket.create_server(("0.0.0.0", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code = ("import numpy as np\n"
                "from qnnrepair.repair.lp import make_backend, NeuronProblem\n"
                "p = NeuronProblem(np.ones((2, 2)), np.ones(2), np.zeros(2, int), 1.0, 0.0, -1,"
                " 1)\n"
                f"make_backend('ray', address='{address}', connect_timeout_s=3).solve([p])\n")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        seconds = time.perf_counter() - start
    last = done.stderr.strip().splitlines()[-1]
    print(f"{seconds:.1f} s: {last}")
    assert last.startswith(f"qnnrepair.errors.QnnRepairError: cannot connect to the Ray cluster "
                           f"at {address}"), last
    # Ray alone would retry for minutes; the subprocess timeout above fails the test then.
