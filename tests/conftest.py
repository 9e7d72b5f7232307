"""Tests use tiny tensors, where torch's thread pool costs more than it gives: one thread."""

import torch

torch.set_num_threads(1)
