# shellcheck shell=bash
# Shared by the benches/*.sh that start mohd (sourced, not run): the release binary, a work
# folder removed on exit (kept with KEEP=1), child processes stopped on exit, mohd started on
# 127.0.0.1 with the built-in demo music (optionally a config and a web listener), and its
# metrics read.
#
# The sourcing script sets `bench` (its name, for messages) first.

# Builds target/release/mohd unless MOHD names a binary; LOAD (the binary whose `mohd load`
# places the calls) defaults to the same one.
mohd_binary() {
  if [ -z "${MOHD:-}" ]; then
    cargo build --release --bin mohd >&2
    MOHD=target/release/mohd
  fi
  LOAD=${LOAD:-$MOHD}
}

# Each call holds descriptors in mohd (and the floor's receivers one per stream).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck disable=SC2154 # bench is set by the sourcing script.
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

# A TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Writes $work/mohd.toml: the TOML on stdin (whole tables), /metrics readable without a token,
# and the demo music as the default channel. For `start_mohd --config "$work/mohd.toml"`.
write_config() {
  {
    cat
    printf '\n[web]\nmetrics_public = true\n\n[channels.default]\nmusic = "demo"\n\n'
    printf '[dialplan]\ndefault = "default"\n'
  } >"$work/mohd.toml"
}

# Starts `mohd serve` on 127.0.0.1 (port chosen by the kernel, a fresh state folder) under
# MOHD_WRAP, with any extra arguments; sets mohd_pid and sip (host:port). No web listener
# unless `web` is set (host:port; /metrics needs a config from write_config). Its log goes to
# $work/mohd.err, or nowhere with MOHD_LOG=0.
start_mohd() {
  local log="$work/mohd.err"
  [ "${MOHD_LOG:-1}" = 0 ] && log=/dev/null
  rm -rf "$work/state"
  # Emptied here, not by the redirection below, which may come after the first look at it.
  : >"$work/mohd.out"
  # shellcheck disable=SC2086 # MOHD_WRAP is a command prefix, split on purpose.
  ${MOHD_WRAP:-} "$MOHD" serve --sip 127.0.0.1:0 --web "${web:-off}" --state "$work/state" "$@" \
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

# The value of one sample of mohd's /metrics (e.g. `metric mohd_calls_active` or
# `metric 'mohd_calls_refused_total{reason="capacity"}'`), or nothing if it cannot be read.
# Never fails (a slow or missing answer must not end a script under `set -e`).
metric() {
  { curl -s --max-time 5 "http://$web/metrics" 2>/dev/null || true; } |
    awk -v name="$1" '$1 == name {print $2; exit}'
}

# Waits until mohd has at least $1 calls up, at most $2 seconds; prints how many it has.
wait_calls_up() {
  local want=$1 limit=$2 up=0 i
  for ((i = 0; i < limit * 2; i++)); do
    up=$(metric mohd_calls_active)
    [ "${up:-0}" -ge "$want" ] && break
    sleep 0.5
  done
  echo "${up:-0}"
}

# A process's CPU time so far (user + system) in clock ticks, ticks_per_s a second.
# shellcheck disable=SC2034 # used by the sourcing scripts.
ticks_per_s=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
