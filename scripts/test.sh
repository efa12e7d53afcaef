#!/usr/bin/env bash
# The test command: sets the machine up, runs every test (unit and root integration tests on the
# real kernel), and ends with the plain count "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --observe || exit 1

report=$(mktemp --suffix=.json)
trap 'rm -f "$report"' EXIT
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
status=$?
node -e '
  const fs = require("node:fs");
  let r = {};
  try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch {}
  // A test file that failed without a failing test (it did not load, or failed in a hook) counts as one failure.
  const broken = (r.testResults ?? []).filter((f) => f.status === "failed" && !(f.assertionResults ?? []).some((a) => a.status === "failed")).length;
  const passed = r.numPassedTests ?? 0, failed = (r.numFailedTests ?? 0) + broken;
  const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  // The last line is the plain count; skipped tests (a tool missing here) are said the line before.
  if (skipped) console.log(`${skipped} skipped`);
  console.log(`${passed} passed, ${failed} failed`);
  if (passed === 0) process.exitCode = 1;
' "$report" || status=1
exit $status
