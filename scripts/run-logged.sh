#!/usr/bin/env bash
# run-logged.sh NAME LOG COMMAND...
#
# Runs COMMAND with its output in LOG, and prints the log whole once it
# ends, with a line saying how it ended: make test runs the kernels' VM
# suites (and the device tests) side by side, and their lines must not
# interleave. `tail -f LOG` follows one while it runs. Exits as COMMAND did.
set -uo pipefail

[ $# -ge 3 ] || { echo "usage: run-logged.sh NAME LOG COMMAND..." >&2; exit 2; }
name=$1
log=$2
shift 2
mkdir -p "$(dirname "$log")"
echo "$name: running, output in $log"
start=$(date +%s)
"$@" >"$log" 2>&1 </dev/null
rc=$?
took=$(($(date +%s) - start))
# The CPU COMMAND and everything it waited for used (QEMU's guests
# included): on a machine with few cores this, not the wall, is what
# running suites side by side shares out.
# (`times` in this shell: in a $(...) subshell it would count none of it.)
times >"$log.times"
cpu=$(awk 'NR == 2 { gsub(/[ms]/, " "); printf "%.0f", $1 * 60 + $2 + $3 * 60 + $4 }' \
	"$log.times")
rm -f "$log.times"
if [ "$rc" = 0 ]; then verdict="passed"; else verdict="FAILED (exit $rc)"; fi
# One printer at a time: two that finish together would mix their lines.
exec 9>>"$(dirname "$log")/.print-lock"
flock 9
echo "===== $name: $verdict in $took s ($cpu CPU-s) ====="
cat "$log"
echo "===== $name: $verdict in $took s ($cpu CPU-s) ====="
exit "$rc"
