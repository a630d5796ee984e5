#!/bin/bash
# Budget checks of the attention studies: single runs (seed 0) at longer budgets, whose
# metrics.jsonl are the learning curves the study budgets are justified by
# (results/attention*/curves/*.metrics.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
train() { OMP_NUM_THREADS=1 nice -n 5 a2d2c train --train.overwrite true "$@"; }
F=studies/recipes/attention_fmnist.yaml
C=studies/recipes/attention_cluttered.yaml
for e in 12 24 48; do
  train --config $F --model.name resnet18 --train.epochs $e --train.output_dir runs/curves/attention_static_${e}ep
done
train --config $F --model.name resnet18_a2d2c_plus --train.epochs 24 --train.output_dir runs/curves/attention_a2d2c_24ep
for e in 10 20; do
  train --config $C --model.name resnet18 --train.epochs $e --train.output_dir runs/curves/cluttered_static_${e}ep
done
