#!/usr/bin/env bash
# Shows that check_released.sh fails when a released upgrade script is
# edited (one byte, or a trailing comment) or removed, when the list is
# edited along with it in a commit, or when a release is dropped from the
# list; and that it passes on the tree as committed. Runs on copies in a
# temp directory.
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
g() { git -C "$T/tree" -c user.name=t -c user.email=t@localhost "$@" >/dev/null; }

copy
"$CHECK" "$T/tree" >/dev/null || { echo "FAIL: the check fails on the committed tree"; exit 1; }
echo "PASS: the committed tree passes"

while read -r _ script; do
    copy; echo "-- an afterthought" >>"$T/tree/$script"; must_fail "a comment appended to $script"
    copy; sed -i '0,/SELECT/s//select/' "$T/tree/$script"; must_fail "a keyword's case changed in $script"
    copy; rm "$T/tree/$script"; must_fail "$script removed"
    # A script and its hash edited together, committed: the history knows.
    copy; g init -q; g add -A; g commit -q -m release
    echo "-- an afterthought" >>"$T/tree/$script"
    sed -i "s|^[0-9a-f]*  $script\$|$(sha256sum "$T/tree/$script" | cut -d' ' -f1)  $script|" "$T/tree/sql/released.sha256"
    g commit -q -am "edit a released script and its hash"
    must_fail "$script and its hash edited in one commit"
    copy; g init -q; g add -A; g commit -q -m release
    sed -i "\|  $script\$|d" "$T/tree/sql/released.sha256"; g commit -q -am "drop a release"
    must_fail "$script dropped from the list in a commit"
done <"$ROOT/sql/released.sha256"
copy; echo "0000000000000000000000000000000000000000000000000000000000000000  README.md" >>"$T/tree/sql/released.sha256"
must_fail "the list names a file that is not an upgrade script"
copy; printf '%s' "$(cat "$T/tree/sql/released.sha256")" >"$T/tree/sql/released.sha256"; echo "-- x" >>"$T/tree/$(awk 'END {print $2}' "$ROOT/sql/released.sha256")"
must_fail "an edited script whose list line has no final newline"

[ $fails -eq 0 ] && echo "released-scripts check: PASS" || { echo "released-scripts check: FAIL ($fails)"; exit 1; }
