#!/usr/bin/env bash
# faults.sh [N] — runs N (default 3) seeded fault schedules against a
# three-node cluster of real kadosession processes on 127.0.0.1: kill -9 and
# restart, SIGSTOP/SIGCONT, and network cuts made by cmd/faultcheck's own
# proxies between the nodes (no Docker, no root). A workload of Go and Kado
# JSON clients runs throughout; after each schedule the history is checked
# for lost acknowledged writes and with porcupine for linearizability, and
# the replicas are compared. The last line is
#   schedules: N, acknowledged writes: W, lost: L, linearizability violations: V
# and the exit status is non-zero when L or V (or a schedule) failed.
#
# Environment: FAULTS_SEED (first seed; schedule k uses FAULTS_SEED+k, to
# replay one), FAULTS_LENGTH (faults per schedule, default 4s),
# FAULTS_VERBOSE=1 (print each fault), FAULTS_DIR (keep data and logs there).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
n=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 go build -o "$work/kadosession" ./cmd/kadosession
go build -o "$work/faultcheck" ./cmd/faultcheck
args=(-bin "$work/kadosession" -schedules "$n" -length "${FAULTS_LENGTH:-4s}")
[ -n "${FAULTS_SEED:-}" ] && args+=(-seed "$FAULTS_SEED")
[ -n "${FAULTS_DIR:-}" ] && args+=(-dir "$FAULTS_DIR")
[ "${FAULTS_VERBOSE:-}" = 1 ] && args+=(-v)
"$work/faultcheck" "${args[@]}"
