"""Post-training quantization baselines, side by side with the repair (docs/DESIGN.md, section 5).

Every baseline is registered by name (`get_baseline("adaround")`) and has one signature:

    baseline(qmodel, calibration_images, *, seed=0, show_progress=False, **params)
        -> QuantizedModel   (a new one; the input is never changed)

    rtn                       round to nearest, as quantized (identity)
    bias_correction           empirical bias correction (Nagel et al. 2019)
    dfq                       cross-layer equalization + bias correction (Nagel et al. 2019)
    gptq                      second-order rounding with error feedback, layer by layer
                              (Frantar et al. ICLR 2023)
    squant                    data-free rounding, E/K/C flips (Guo et al. ICLR 2022)
    adaround                  learned up/down rounding, layer by layer (Nagel et al. ICML 2020)
    qdrop                     block reconstruction with activation quantization randomly dropped
                              (Wei et al. ICLR 2022)
    least_squares_last_layer  closed-form refit of the last layer to the float logits
"""

from qnnrepair.baselines.adaround import adaround
from qnnrepair.baselines.bias_correction import bias_correction
from qnnrepair.baselines.dfq import dfq
from qnnrepair.baselines.gptq import gptq
from qnnrepair.baselines.least_squares import fit_last_layer, least_squares_last_layer
from qnnrepair.baselines.qdrop import find_blocks, qdrop
from qnnrepair.baselines.registry import (
    BASELINES,
    baseline_parameters,
    get_baseline,
    register_baseline,
)
from qnnrepair.baselines.rtn import rtn
from qnnrepair.baselines.squant import squant, squant_round

__all__ = [
    "BASELINES", "adaround", "baseline_parameters", "bias_correction", "dfq", "find_blocks",
    "fit_last_layer", "get_baseline", "gptq", "least_squares_last_layer", "qdrop",
    "register_baseline", "rtn", "squant", "squant_round",
]
