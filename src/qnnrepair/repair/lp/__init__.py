"""The repair's linear programs (docs/DESIGN.md, section 4), numpy + highspy only (no torch).

    core.py         assembly, norm encodings, rounding, MILP warm start (every formulation)
    result.py       LPResult, default lam / kappa in step units, row selection
    margin.py       the output layer's margin LP        (formulation "margin")
    neuron.py       one neuron's match / sign LP
    match.py        summarized L1 match to the float    (formulation "match", the default)
    sign.py         sign constraints on raw rows        (formulation "sign", the paper's)
    formulation.py  what a formulation sees of a layer, the registry
    backend.py      where LPs are solved: the local process pool, or a registered backend
    ray_backend.py  the backend "ray": LPs in batches as Ray tasks (Ray imported on first use)
    highs.py        the HiGHS driver
"""

from qnnrepair.repair.lp import margin, match, sign  # noqa: F401  (register their formulations)
from qnnrepair.repair.lp.backend import (
    BACKENDS,
    LocalPool,
    LPBackend,
    make_backend,
    register_backend,
    solve_many,
)
from qnnrepair.repair.lp.formulation import (
    FORMULATIONS,
    Formulation,
    LayerLP,
    LPProblem,
    formulation_names,
    get_formulation,
    register_formulation,
)
from qnnrepair.repair.lp.margin import MarginProblem, solve_margin_lp
from qnnrepair.repair.lp.neuron import NeuronProblem, solve_neuron_lp
from qnnrepair.repair.lp.ray_backend import RayPool  # registers the backend "ray"
from qnnrepair.repair.lp.result import (
    KAPPA_STEPS,
    LAM_STEPS,
    NORMS,
    LPResult,
    even_stride,
    select_rows,
)

__all__ = [
    "BACKENDS", "FORMULATIONS", "KAPPA_STEPS", "LAM_STEPS", "NORMS", "Formulation", "LPBackend",
    "LPProblem", "LPResult", "LayerLP", "LocalPool", "MarginProblem", "NeuronProblem", "RayPool",
    "even_stride", "formulation_names", "get_formulation", "make_backend", "register_backend",
    "register_formulation", "select_rows", "solve_many", "solve_margin_lp", "solve_neuron_lp",
]
