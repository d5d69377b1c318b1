"""Second reference: libg722 (PyPI `g722` 1.2.8, sippy/libg722, the SpanDSP code with a
saturating decoder output). Run by regenerate.sh after gen-vectors.c.

Checks that libg722 encodes every NAME.pcm to exactly SpanDSP's NAME.g722, and writes
NAME.libg722.dec.pcm, libg722's decoding of NAME.g722, for the signals whose decoding
overloads the synthesis filter (there SpanDSP wraps and libg722 saturates)."""
import array
import sys

import G722

folder = sys.argv[1]


def read_pcm(path):
    samples = array.array("h")
    with open(path, "rb") as f:
        samples.frombytes(f.read())
    return samples


for name in ["silence", "tones", "sweep", "noise", "square"]:
    ours = bytes(G722.G722(16000, 64000).encode(read_pcm(f"{folder}/{name}.pcm")))
    with open(f"{folder}/{name}.g722", "rb") as f:
        if ours != f.read():
            sys.exit(f"libg722 and SpanDSP encode {name} differently")

for name in ["noise", "square", "random"]:
    with open(f"{folder}/{name}.g722", "rb") as f:
        decoded = array.array("h", G722.G722(16000, 64000).decode(f.read()))
    with open(f"{folder}/{name}.libg722.dec.pcm", "wb") as f:
        f.write(decoded.tobytes())
