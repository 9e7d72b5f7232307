#!/usr/bin/env bash
# Trains the paper's model zoo on CIFAR-10 train30k (seed 0), the four in parallel.
# Usage: scripts/train_zoo.sh TRAIN.npz TEST.npz OUT_DIR [DEVICE]
# The committed weights in models/ came from this script on one H200 (see models/README.md).
set -euo pipefail
train=$1 test=$2 out=$3 device=${4:-cpu}
mkdir -p "$out"
run() {  # model epochs
  qnnrepair train --model "$1" --epochs "$2" --seed 0 --device "$device" \
    --train "$train" --test "$test" --out "$out/cifar10-$1.pt" > "$out/cifar10-$1.stdout" 2>&1
}
run conv3 30 & run conv5 30 & run vgg 40 & run mobilenetv2 40 &
wait
