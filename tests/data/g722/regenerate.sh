#!/bin/sh
# Regenerates the G.722 reference vectors beside this script: SpanDSP first (gen-vectors.c),
# then libg722 (libg722-vectors.py) as a cross-check and for the saturating decodings.
# Needs: a C compiler, Debian's libspandsp-dev (apt-get install libspandsp-dev), python3 with
# venv, and PyPI for `pip install g722==1.2.8` into a throw-away virtualenv.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -Wall -o "$work/gen-vectors" "$dir/gen-vectors.c" -lspandsp -lm
"$work/gen-vectors" "$dir"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet g722==1.2.8
"$work/venv/bin/python" "$dir/libg722-vectors.py" "$dir"
