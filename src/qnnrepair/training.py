"""Train a zoo model from scratch on CIFAR-style data, reproducibly from a seed.

    result = train("conv3", "train30k.npz", "test.npz", TrainConfig(epochs=30, seed=0))
    save_trained(result, "conv3.pt")       # state dict + conv3.log.jsonl beside it

The recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4 on every parameter, a one-cycle
learning rate peaking at `lr`, batches of 128, plain cross-entropy (no label smoothing), and per
image a random 32x32 crop of the zero-padded (4 pixels) image and a random horizontal flip.
Inputs are normalized with the model's `ModelInfo` exactly as `data.to_tensor` does, and test
accuracy is `evaluation.accuracy`, so a trained model is scored like the shared checkpoints.

Determinism: the weights are initialized under `torch.manual_seed(seed)` on the CPU (the same
start on every device), and one `torch.Generator` seeded with `seed` on the training device
draws every shuffle, crop and flip in a fixed order. On CUDA, training runs with
`torch.use_deterministic_algorithms(True)` and cuDNN benchmarking off; cuBLAS needs
`CUBLAS_WORKSPACE_CONFIG=:4096:8`, which is set here unless the user set it. Same seed and same
device (and software) give bit-identical weights; CPU and CUDA give different ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.data import Dataset, check_compatible, load_dataset
from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import accuracy
from qnnrepair.fileio import atomic_path, write_text
from qnnrepair.models import ModelInfo, build_model, model_info
from qnnrepair.progress import progress

logger = logging.getLogger(__name__)

CUBLAS_WORKSPACE = ":4096:8"  # one of the two settings under which cuBLAS is deterministic
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the recipe's numbers, the seed and the device. Checked when built.

    30 epochs is the default because it is what a small CIFAR model (conv3, conv5) can afford on
    a CPU and it gets most of what the recipe gives; the deeper models gain from longer runs on a
    GPU (`device="cuda"`).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05  # peak of the one-cycle schedule, reached after 30% of the steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int = 4  # pixels of zero padding before the random crop; 0: no crops
    flip: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise QnnRepairError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise QnnRepairError(
                f"batch size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0:
            raise QnnRepairError(f"learning rate must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise QnnRepairError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise QnnRepairError(f"weight decay must be 0 or more, got {self.weight_decay!r}")
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise QnnRepairError(f"crop padding must be 0 or more, got {self.crop_padding!r}")
        if not isinstance(self.seed, int):
            raise QnnRepairError(f"seed must be an integer, got {self.seed!r}")
        if not _DEVICE.fullmatch(str(self.device)):
            raise QnnRepairError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One line of the training log. Accuracies in percent; `lr` is the last step's."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """The trained model (eval mode, on the CPU) and how it came to be."""

    model_spec: str
    model: nn.Module
    config: TrainConfig
    num_classes: int
    n_train: int
    n_test: int
    sources: dict[str, str]
    history: list[EpochRecord]
    wall_s: float

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy

    def __repr__(self) -> str:
        return (f"TrainResult({self.model_spec}, epochs={len(self.history)}, "
                f"test_accuracy={self.test_accuracy:.2f}, wall_s={self.wall_s:.1f})")


# ---------------------------------------------------------------- the verb

def train(model_spec: str, train_data: str | Path | Dataset, test_data: str | Path | Dataset,
          config: TrainConfig | None = None, *, num_classes: int = 10,
          show_progress: bool = False) -> TrainResult:
    """Train zoo model `model_spec` from scratch on `train_data`, scoring `test_data` each epoch.

    Data are paths (any format `load_dataset` reads) or `Dataset`s. Every check (model name,
    device, data files, shapes, labels, batch size) runs before the first step.
    """
    config = config or TrainConfig()
    if ":" in model_spec:
        raise QnnRepairError(f"train builds zoo models only, got {model_spec!r}; train a "
                             "network of your own with your code and pass its state dict to "
                             "--weights")
    info = model_info(model_spec, num_classes)
    device = _device(config.device)
    train_set, test_set = _dataset(train_data, "train"), _dataset(test_data, "test")
    for dataset in (train_set, test_set):
        check_compatible(dataset, info)
    if config.batch_size > len(train_set):
        raise QnnRepairError(f"batch size {config.batch_size} is larger than the training set "
                             f"({len(train_set)} images); give a smaller batch size")
    start = time.perf_counter()
    with _seeded(config.seed, device), deterministic_mode(device):
        model = build_model(model_spec, num_classes).to(device)  # initialized on the CPU RNG
        history = _fit(model, info, config, train_set, test_set, show_progress)
    result = TrainResult(model_spec, model.cpu().eval(), config, num_classes, len(train_set),
                         len(test_set), {"train": _source(train_data),
                                         "test": _source(test_data)},
                         history, time.perf_counter() - start)
    logger.info("trained %s in %.1fs: test accuracy %.2f%%", model_spec, result.wall_s,
                result.test_accuracy)
    return result


def _fit(model: nn.Module, info: ModelInfo, config: TrainConfig, train_set: Dataset,
         test_set: Dataset, show_progress: bool) -> list[EpochRecord]:
    """The epoch loop: SGD steps on augmented batches, then the test accuracy."""
    device = next(model.parameters()).device
    images, labels = _on_device(train_set, device)
    test_images, test_labels = _on_device(test_set, device)
    test_images = normalize(test_images, info.mean, info.std)
    steps_per_epoch = len(labels) // config.batch_size  # the last partial batch is dropped
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
        cycle_momentum=False)  # the momentum stays what the config says
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history = []
    epochs = progress(range(1, config.epochs + 1), show_progress, desc=f"train {info.name}",
                      unit="epoch")
    for epoch in epochs:
        start = time.perf_counter()
        batches = augmented_batches(images, labels, info, config, generator)
        loss, train_acc = train_epoch(model, optimizer, schedule, progress(
            batches, show_progress, total=steps_per_epoch, desc=f"epoch {epoch}", unit="batch"))
        test_acc = accuracy(model, test_images, test_labels)
        history.append(EpochRecord(epoch, loss, train_acc, test_acc, schedule.get_last_lr()[0],
                                   time.perf_counter() - start))
        logger.info("epoch %d/%d: train loss %.4f, train accuracy %.2f%%, test accuracy %.2f%%, "
                    "%.1fs", epoch, config.epochs, loss, train_acc, test_acc,
                    history[-1].seconds)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{loss:.3f}", train=f"{train_acc:.1f}",
                               test=f"{test_acc:.1f}")
    return history


def augmented_batches(images: torch.Tensor, labels: torch.Tensor, info: ModelInfo,
                      config: TrainConfig, generator: torch.Generator
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (normalized augmented images, labels) batches from uint8 NCHW `images`,
    in an order drawn from `generator`; full batches only."""
    order = torch.randperm(len(labels), generator=generator, device=labels.device)
    for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
        index = order[start:start + config.batch_size]
        x = augment(images[index], generator, config.crop_padding, config.flip)
        yield normalize(x, info.mean, info.std), labels[index]


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler,
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """One SGD step per batch (the schedule steps too): (mean loss, accuracy in percent)."""
    model.train()
    loss_sum, correct, n_seen = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        # Summed on the device (a tensor + a number stays a tensor): no sync per step.
        loss_sum = loss_sum + loss.detach() * len(y)
        correct = correct + (logits.argmax(dim=1) == y).sum()
        n_seen += len(y)
    return float(loss_sum) / n_seen, 100.0 * int(correct) / n_seen


# ---------------------------------------------------------------- tensors

def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Per image, a random crop of the zero-padded image and a random horizontal flip.

    uint8 NCHW in and out, like torchvision's RandomCrop(size, padding) followed by
    RandomHorizontalFlip(), done as one gather on the images' device. Draws, in this order:
    row offsets, column offsets, flips (all from `generator`).
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        flipped = torch.rand((n, 1), generator=generator, device=device) < 0.5
        cols = torch.where(flipped, w - 1 - cols, cols)
    rows = top + torch.arange(h, device=device)
    cols = left + cols
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW -> normalized float32, the same operations in the same order as `to_tensor`
    (scale to [0, 1], subtract the mean, divide by the std), so the values are bit-identical."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().div_(255).sub_(mean_t).div_(std_t)


def _on_device(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and int64 labels on `device`: moved once, batches are indexed there."""
    images = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).contiguous()
    return images.to(device), torch.from_numpy(dataset.labels).long().to(device)


# ---------------------------------------------------------------- determinism

def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise QnnRepairError(f"device {name}: PyTorch {torch.__version__} sees no CUDA GPU; "
                                 "use device cpu or a CUDA build of torch on a GPU machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise QnnRepairError(f"device {name}: only {torch.cuda.device_count()} CUDA "
                                 "device(s) are visible")
    return device


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block and give the caller's state back after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic_mode(device: torch.device) -> Iterator[None]:
    """On CUDA: deterministic algorithms on and cuDNN benchmarking off for the block, restored
    after; CUBLAS_WORKSPACE_CONFIG set unless the user set it. On the CPU: nothing to do."""
    if device.type != "cuda":
        yield
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():
            logger.warning("CUDA was started before CUBLAS_WORKSPACE_CONFIG was set; if "
                           "training fails or differs between runs, run with "
                           "CUBLAS_WORKSPACE_CONFIG=%s in the environment", CUBLAS_WORKSPACE)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.backends.cudnn.benchmark = was_benchmark


# ---------------------------------------------------------------- files

def log_path(weights: str | Path) -> Path:
    """The training log beside a weights file: conv3.pt -> conv3.log.jsonl."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".log.jsonl")


def save_trained(result: TrainResult, path: str | Path) -> None:
    """Write the state dict to `path` (loadable with weights_only=True) and the log beside it.

    The log is JSON lines: one `{"kind": "config", ...}` line saying what produced the weights,
    then one `{"kind": "epoch", ...}` line per epoch. Each file appears whole or not at all, and
    the same weights give the same bytes, whatever the file is called.
    """
    state = {key: value.detach().cpu().clone() for key, value in
             result.model.state_dict().items()}
    lines = [json.dumps({"kind": "config", "model": result.model_spec,
                         "num_classes": result.num_classes, "config": result.config.to_dict(),
                         "train": result.sources["train"], "n_train": result.n_train,
                         "test": result.sources["test"], "n_test": result.n_test,
                         "torch": torch.__version__, "wall_s": round(result.wall_s, 3)})]
    lines += [json.dumps({"kind": "epoch", **asdict(record)}) for record in result.history]
    buffer = io.BytesIO()  # saved to a file, torch names the archive's folder after the file
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    write_text(log_path(path), "\n".join(lines) + "\n")


def _dataset(data: str | Path | Dataset, split: str) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data, split=split)


def _source(data: str | Path | Dataset) -> str:
    return repr(data) if isinstance(data, Dataset) else str(data)
