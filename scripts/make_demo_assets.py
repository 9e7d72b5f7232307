"""Build the embedded default that `qnnrepair demo` runs on, from ../shared.

    python scripts/make_demo_assets.py [--shared ../shared]

Writes src/qnnrepair/assets/: the pretrained CIFAR-10 ResNet-20 (BSD-2-Clause, notice copied
beside it) as a plain state dict, and a CIFAR-10 subset: 2,000 training images (the demo's repair
and validation sets) and 2,000 test images, drawn with a fixed seed.
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).resolve().parents[1] / "src" / "qnnrepair" / "assets"
N_TRAIN, N_TEST, SEED = 2000, 2000, 2024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    ASSETS.mkdir(parents=True, exist_ok=True)

    ckpt = torch.load(args.shared / "models" / "cifar10-resnet20.th", map_location="cpu",
                      weights_only=True)
    state = {k.removeprefix("module."): v.float().contiguous()
             for k, v in ckpt["state_dict"].items()}
    torch.save(state, ASSETS / "resnet20-cifar10.pt")
    shutil.copy(args.shared / "models" / "LICENSE-cifar10-resnet.txt",
                ASSETS / "LICENSE-resnet20-cifar10.txt")

    rng = np.random.Generator(np.random.PCG64(SEED))
    train = np.load(args.shared / "data" / "cifar10" / "train30k.npz")
    test = np.load(args.shared / "data" / "cifar10" / "test.npz")
    i_train = np.sort(rng.choice(len(train["y"]), N_TRAIN, replace=False))
    i_test = np.sort(rng.choice(len(test["y"]), N_TEST, replace=False))
    np.savez_compressed(ASSETS / "cifar10-demo.npz",
                        x_train=train["x"][i_train], y_train=train["y"][i_train],
                        x_test=test["x"][i_test], y_test=test["y"][i_test])
    for path in sorted(ASSETS.iterdir()):
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
