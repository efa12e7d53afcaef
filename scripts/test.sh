#!/usr/bin/env bash
# The test command: sets the machine up, runs every test (unit and root integration tests on the
# real kernel), and ends with the plain count "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --observe || exit 1

report=$(mktemp --suffix=.json)
unfinished=$(mktemp)
trap 'rm -f "$report" "$unfinished"' EXIT
AMBIT_UNFINISHED_FILES="$unfinished" npx vitest run --reporter=default --reporter=json --outputFile.json="$report" \
  --reporter=./test/helpers/unfinished-files-reporter.ts "$@"
status=$?
node -e '
  const fs = require("node:fs");
  let r = {};
  try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch {}
  // A test file that failed without a failing test (it did not load, or failed in a hook) counts as one failure.
  const broken = (r.testResults ?? []).filter((f) => f.status === "failed" && !(f.assertionResults ?? []).some((a) => a.status === "failed")).length;
  // So does one whose worker died before it finished (the JSON report calls it passed).
  // Its tests that did not run are in the report as pending: they were not skipped.
  const unfinished = fs.readFileSync(process.argv[2], "utf8").split("\n").filter(Boolean).map((l) => l.split("\t"));
  for (const [, f] of unfinished) console.log(`failed: ${f} did not finish (its worker exited)`);
  const notRun = unfinished.reduce((n, [c]) => n + Number(c), 0);
  const passed = r.numPassedTests ?? 0, failed = (r.numFailedTests ?? 0) + broken + unfinished.length;
  const skipped = Math.max(0, (r.numPendingTests ?? 0) - notRun) + (r.numTodoTests ?? 0);
  // The last line is the plain count; skipped tests (a tool missing here) are said the line before.
  if (skipped) console.log(`${skipped} skipped`);
  console.log(`${passed} passed, ${failed} failed`);
  if (passed === 0) process.exitCode = 1;
' "$report" "$unfinished" || status=1
exit $status
