"""Writes a hostile image folder for tests/hostile.rs: valid photos of three classes mixed with every
kind of file that has hung, exhausted or crashed image tools, and `expect.json` saying what a correct
run must do with each (use it, or skip it with one warning naming it).

Usage: make_hostile.py OUT_DIR
"""
import io
import json
import os
import socket
import struct
import sys
import zlib

from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
expect = {"valid": {}, "warned": [], "ignored": []}


def img(w, h, seed):
    im = Image.new("RGB", (w, h))
    px = im.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = ((x * 7 + seed * 40) % 256, (y * 5 + seed * 13) % 256, (x * y + seed) % 256)
    return im


def jpeg(im, q=90):
    b = io.BytesIO()
    im.save(b, "JPEG", quality=q)
    return b.getvalue()


def put(rel, data):
    p = os.path.join(out, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    return p


def valid(cls, rel, data):
    put(rel, data)
    expect["valid"].setdefault(cls, []).append(rel)


def warned(rel):
    expect["warned"].append(rel)


# Valid photos: three classes, the third nested deep (its label is the innermost folder's name).
for i in range(12):
    valid("cats", f"cats/cat{i}.jpg", jpeg(img(40, 30, i)))
    valid("dogs", f"dogs/dog{i}.png", (lambda b: (img(30, 40, 50 + i).save(b, "PNG"), b.getvalue())[1])(io.BytesIO()))
deep = "/".join(f"d{k}" for k in range(1, 21))
for i in range(6):
    valid("d20", f"{deep}/deep{i}.jpg", jpeg(img(32, 32, 100 + i)))
# Odd but valid names: a newline, and bytes that are not UTF-8.
valid("cats", "cats/new\nline.jpg", jpeg(img(40, 30, 200)))
bad_name = b"cats/latin1-\xe9t\xe9.jpg"
with open(os.path.join(out.encode(), bad_name), "wb") as f:
    f.write(jpeg(img(40, 30, 201)))
expect["valid"]["cats"].append(bad_name.decode("utf-8", "replace"))

# Files that hang or never end when read naively.
os.symlink("/dev/zero", os.path.join(out, "cats/zero.jpg")); warned("cats/zero.jpg")
os.symlink("/dev/urandom", os.path.join(out, "dogs/random.png")); warned("dogs/random.png")
os.mkfifo(os.path.join(out, "cats/pipe.jpg")); warned("cats/pipe.jpg")
s = socket.socket(socket.AF_UNIX)
s.bind(os.path.join(out, "dogs/sock.jpg")); s.close(); warned("dogs/sock.jpg")
os.symlink("missing-target.jpg", os.path.join(out, "cats/dangling.jpg")); warned("cats/dangling.jpg")

# Folder symlink loops, and a second link to a folder already walked.
os.symlink(".", os.path.join(out, "cats/self-loop")); warned("cats/self-loop")
os.symlink("..", os.path.join(out, "dogs/parent-loop")); warned("dogs/parent-loop")
os.symlink("../dogs", os.path.join(out, "cats/dogs-again")); warned("cats/dogs-again")

# Named like images, but not images.
for rel, data in [
    ("cats/empty.jpg", b""),
    ("cats/page.jpg", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>"),
    ("dogs/api.png", b'{"error": "rate limited"}'),
    ("dogs/logo.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>'),
    ("cats/doc.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
    ("dogs/archive.jpg", b"PK\x03\x04" + b"\x00" * 60),
    ("cats/zeros.jpg", b"\x00" * 4096),
]:
    put(rel, data)
    warned(rel)

# Broken images: truncated, corrupt, and headers that claim enormous sizes.
full = jpeg(img(40, 30, 7))
put("cats/truncated.jpg", full[: len(full) // 2]); warned("cats/truncated.jpg")
put("dogs/garbage.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000)); warned("dogs/garbage.jpg")


def png_header(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


put("dogs/huge.png", png_header(65000, 65000)); warned("dogs/huge.png")
big_jpeg = bytearray(jpeg(img(16, 16, 9)))
sof = big_jpeg.find(b"\xff\xc0")
big_jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
put("cats/huge.jpg", bytes(big_jpeg)); warned("cats/huge.jpg")
# Over the byte cap the test passes (--max-file-mb 1): a valid but 1.5 MB file.
put("dogs/oversized.jpg", jpeg(img(16, 16, 3)) + os.urandom(1_500_000)); warned("dogs/oversized.jpg")

# Ignored silently: hidden files and files not named like images.
put("cats/.DS_Store", b"\x00\x00\x00\x01Bud1"); expect["ignored"].append("cats/.DS_Store")
put("dogs/README.txt", b"photos of dogs"); expect["ignored"].append("dogs/README.txt")

with open(os.path.join(os.path.dirname(out.rstrip("/")), "expect.json"), "w") as f:
    json.dump(expect, f, indent=1)
