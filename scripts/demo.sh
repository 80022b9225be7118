#!/usr/bin/env bash
# The main job on the embedded default (until the fine-tune lands: the binary's help and an ImageNet
# smoke check on a committed sample photo with real mobilenet_v2 weights).
set -euo pipefail
cd "$(dirname "$0")/.."
./target/release/finetune --help
W=../shared/weights/mobilenet_v2-b0353104.pth
if [ -f "$W" ]; then
  ./target/release/finetune classify-imagenet --arch mobilenet_v2 --weights "$W" ../shared/data/clothing-small/test/shoes/*.jpg | head -12
else
  ./target/release/finetune classify-imagenet --arch mobilenet_v2 ../shared/data/clothing-small/test/shoes/*.jpg | head -12
fi
