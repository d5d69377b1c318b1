#!/bin/sh
# Regenerates the G.722 reference vectors beside this script with SpanDSP.
# Needs: a C compiler and Debian's libspandsp-dev (apt-get install libspandsp-dev).
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
cc -O2 -Wall -o "$bin" "$dir/gen-vectors.c" -lspandsp -lm
"$bin" "$dir"
