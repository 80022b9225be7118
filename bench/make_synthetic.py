"""Writes N small synthetic JPEG photos (320x240, 10 classes, one folder each) for the memory
benchmark of bench/cache_bench.sh: python bench/make_synthetic.py N OUT_DIR [SEED]."""
import os
import random
import sys

from PIL import Image, ImageDraw

n, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
for i in range(n):
    c = i % 10
    d = os.path.join(out, f"class{c}")
    os.makedirs(d, exist_ok=True)
    img = Image.new("RGB", (320, 240), (25 * c, 255 - 25 * c, rng.randrange(256)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.randrange(300), rng.randrange(220)
        box = [x, y, x + rng.randrange(10, 120), y + rng.randrange(10, 90)]
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    img.save(os.path.join(d, f"{i:06d}.jpg"), quality=85)
