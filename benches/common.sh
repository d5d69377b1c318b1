# Shared by benches/load.sh and benches/churn.sh (sourced, not run): the release binary, a work
# folder removed on exit (kept with KEEP=1), child processes stopped on exit, and mohd started
# on 127.0.0.1 with the built-in demo music.
#
# The sourcing script sets `bench` (its name, for messages) first.

# Builds target/release/mohd unless MOHD names a binary.
mohd_binary() {
  if [ -z "${MOHD:-}" ]; then
    cargo build --release --bin mohd >&2
    MOHD=target/release/mohd
  fi
}

# Each call holds descriptors in mohd (and the floor's receivers one per stream).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "/tmp/mohd-$bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "$bench: logs in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Starts `mohd serve` on 127.0.0.1 (port chosen by the kernel, no web listener, a fresh state
# folder) under MOHD_WRAP, with any extra arguments; sets mohd_pid and sip (host:port). Its log
# goes to $work/mohd.err, or nowhere with MOHD_LOG=0.
start_mohd() {
  local log="$work/mohd.err"
  [ "${MOHD_LOG:-1}" = 0 ] && log=/dev/null
  # shellcheck disable=SC2086 # MOHD_WRAP is a command prefix, split on purpose.
  ${MOHD_WRAP:-} "$MOHD" serve --sip 127.0.0.1:0 --web off --state "$work/state" "$@" \
    >"$work/mohd.out" 2>"$log" &
  mohd_pid=$!
  pids+=("$mohd_pid")
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q "SIP listening on udp:" "$work/mohd.out" 2>/dev/null && break
    sleep 0.1
  done
  sip=$(sed -n 's/^mohd: SIP listening on udp://p' "$work/mohd.out" | head -n1)
  if [ -z "$sip" ]; then
    echo "$bench: mohd did not start:" >&2
    cat "$work/mohd.err" >&2 2>/dev/null || true
    exit 1
  fi
}
