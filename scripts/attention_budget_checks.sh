#!/bin/bash
# Budget checks (issue 16): the static networks trained twice as long, seed 0.
cd "$(dirname "$0")/.."
nice -n 5 env PYTHONPATH=src python3 -m a2d2c train --config src/a2d2c/configs/studies/recipes/attention_fmnist.yaml --model.name resnet18 --train.epochs 12 --train.output_dir runs/curves/attention_static_12ep
nice -n 5 env PYTHONPATH=src python3 -m a2d2c train --config src/a2d2c/configs/studies/recipes/attention_cluttered.yaml --model.name resnet18 --train.epochs 10 --train.output_dir runs/curves/cluttered_static_10ep
