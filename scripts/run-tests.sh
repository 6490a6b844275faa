#!/usr/bin/env bash
# Runs petrel's unit tests (doctest) and integration tests (pytest against the
# real binary), prints both outputs, and ends with one line "N passed, N failed"
# (totals over both). Exits non-zero when anything failed or a runner could not run.
#
# usage: scripts/run-tests.sh BUILD_DIR
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 64
fi
build=$(cd "$1" 2>/dev/null && pwd) || { echo "run-tests: no build dir $1" >&2; echo "0 passed, 0 failed"; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
python=/usr/bin/python3

passed=0
failed=0
broken=0   # a runner that could not run, or died without a summary: counted as one failure

strip_ansi() { sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g'; }

# --- unit tests -------------------------------------------------------------
echo "== unit tests: $build/unit_tests"
unit_out=$(mktemp)
integ_out=$(mktemp)
trap 'rm -f "$unit_out" "$integ_out"' EXIT

if [ -x "$build/unit_tests" ]; then
  PETREL_RULES_SO="$(readlink -f "$build")/rules.so" timeout 600 "$build/unit_tests" 2>&1 | tee "$unit_out"
  unit_rc=${PIPESTATUS[0]}
  # [doctest] test cases: 42 | 41 passed | 1 failed | 0 skipped
  summary=$(strip_ansi < "$unit_out" | grep -E '^\[doctest\] test cases:' | tail -n 1)
  if [ -n "$summary" ]; then
    up=$(sed -nE 's/.*\| *([0-9]+) passed.*/\1/p' <<<"$summary")
    uf=$(sed -nE 's/.*\| *([0-9]+) failed.*/\1/p' <<<"$summary")
    passed=$((passed + ${up:-0}))
    failed=$((failed + ${uf:-0}))
    if [ "$unit_rc" -ne 0 ] && [ "${uf:-0}" -eq 0 ]; then
      echo "run-tests: unit_tests exited $unit_rc without reporting failures" >&2
      broken=1
    fi
  else
    echo "run-tests: unit_tests printed no doctest summary (exit $unit_rc)" >&2
    broken=1
  fi
else
  echo "run-tests: $build/unit_tests is missing or not executable" >&2
  broken=1
fi

# --- integration tests -------------------------------------------------------
echo
echo "== integration tests: tests/integration (PETREL_BIN=$build/petrel)"
if [ ! -x "$python" ]; then
  echo "run-tests: $python not found" >&2
  broken=1
elif ! "$python" -c 'import pytest' 2>/dev/null; then
  echo "run-tests: pytest is not installed for $python (apt-get install python3-pytest)" >&2
  broken=1
else
  (cd "$repo" && PETREL_BIN="$build/petrel" timeout 900 "$python" -m pytest -q \
      -p no:cacheprovider tests/integration) 2>&1 | tee "$integ_out"
  integ_rc=${PIPESTATUS[0]}
  # e.g. "3 failed, 120 passed, 2 skipped, 1 error in 42.1s"
  summary=$(strip_ansi < "$integ_out" | grep -E '[0-9]+ (passed|failed|errors?)\b' \
              | grep -E ' in [0-9.]+s' | tail -n 1)
  if [ -n "$summary" ]; then
    ip=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+')
    if_=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+')
    ie=$(grep -oE '[0-9]+ errors?' <<<"$summary" | grep -oE '[0-9]+')
    passed=$((passed + ${ip:-0}))
    failed=$((failed + ${if_:-0} + ${ie:-0}))
    if [ "$integ_rc" -ne 0 ] && [ $(( ${if_:-0} + ${ie:-0} )) -eq 0 ]; then
      echo "run-tests: pytest exited $integ_rc without reporting failures" >&2
      broken=1
    fi
  else
    echo "run-tests: pytest printed no summary (exit $integ_rc)" >&2
    broken=1
  fi
fi

if [ "$broken" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1
fi
echo
echo "$passed passed, $failed failed"
if [ "$failed" -ne 0 ] || [ "$broken" -ne 0 ]; then
  exit 1
fi
exit 0
