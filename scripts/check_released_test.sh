#!/usr/bin/env bash
# Shows that check_released.sh fails when a released upgrade script is
# edited (one byte, or a trailing comment) or removed, and passes on the
# tree as committed. Runs on copies in a temp directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHECK="$ROOT/scripts/check_released.sh"
T=$(mktemp -d /tmp/secret_vault-released-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0

[ -s "$ROOT/sql/released.sha256" ] || { echo "FAIL: sql/released.sha256 lists no released script"; exit 1; }
copy() { rm -rf "$T/tree" && mkdir -p "$T/tree" && cp -r "$ROOT/sql" "$T/tree/"; }
must_fail() {
    if "$CHECK" "$T/tree" >/dev/null 2>&1; then echo "FAIL: the check passed after: $1"; fails=$((fails + 1)); else echo "PASS: the check fails after: $1"; fi
}

copy
"$CHECK" "$T/tree" >/dev/null || { echo "FAIL: the check fails on the committed tree"; exit 1; }
echo "PASS: the committed tree passes"

while read -r _ script; do
    copy; echo "-- an afterthought" >>"$T/tree/$script"; must_fail "a comment appended to $script"
    copy; sed -i '0,/SELECT/s//select/' "$T/tree/$script"; must_fail "a keyword's case changed in $script"
    copy; rm "$T/tree/$script"; must_fail "$script removed"
done <"$ROOT/sql/released.sha256"
copy; echo "0000000000000000000000000000000000000000000000000000000000000000  README.md" >>"$T/tree/sql/released.sha256"
must_fail "the list names a file that is not an upgrade script"

[ $fails -eq 0 ] && echo "released-scripts check: PASS" || { echo "released-scripts check: FAIL ($fails)"; exit 1; }
