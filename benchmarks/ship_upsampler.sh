#!/bin/bash
# Ship a trained upsampler run: copy runs/ups_<domain> (the loadable files and the training record, not its
# checkpoints/ or samples/) into checkpoints/<domain>/upsampler and name it in the generator's cascade.json.
#   bash benchmarks/ship_upsampler.sh brain_mri
set -e
d=$1; src=runs/ups_$d; dst=checkpoints/$d/upsampler
cd "$(dirname "$0")/.."
rm -rf $dst.tmp && mkdir -p $dst.tmp
cp -r $src/model_index.json $src/unet $src/scheduler $src/README.md $src/args.json $src/split.json $src/loss.csv $src/train_summary.json $src/sample_grid.png $dst.tmp/
rm -rf $dst && mv $dst.tmp $dst
python -m medsynth cascade --diffusion checkpoints/$d/diffusion --upsampler $dst
du -sh $dst
