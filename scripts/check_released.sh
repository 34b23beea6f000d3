#!/usr/bin/env bash
# Released upgrade scripts are frozen: a database that ran one must never
# see it change. sql/released.sha256 lists each released script and its
# SHA-256; this fails if a listed script changed or went missing. A new
# release adds its script to the list (sha256sum sql/secret_vault--A--B.sql
# >> sql/released.sha256) in the commit that ships it.
#
# The list lives in the same tree as the scripts, so an edit to a script
# and to its line in the list would pass a plain hash check. In a git
# checkout the list is also held to its history: every line it ever held
# must still be there, unchanged (a release is never taken back or
# re-hashed).
#
# Usage: check_released.sh [TREE]   (TREE defaults to this repository;
# check_released_test.sh points it at edited copies to show it can fail)
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
LIST=sql/released.sha256
fail() { echo "$*" >&2; echo "a released upgrade script was edited or removed: ship the change as a new upgrade script instead" >&2; exit 1; }

# In git: every line the list ever held, in any commit, is still in it.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    for c in $(git log --format=%H -- "$LIST" 2>/dev/null); do
        while IFS= read -r line || [ -n "$line" ]; do
            [ -z "$line" ] && continue
            grep -qxF -- "$line" "$LIST" 2>/dev/null || fail "$LIST no longer holds, as commit ${c:0:12} did: $line"
        done < <(git show "$c:$LIST" 2>/dev/null || true)
    done
fi

if [ ! -s "$LIST" ]; then
    echo "released scripts: none listed"
    exit 0
fi
n=0
while read -r hash name || [ -n "${hash:-}" ]; do
    [ -z "${hash:-}" ] && continue
    case "$name" in
        sql/secret_vault--*--*.sql) ;;
        *) fail "$LIST lists '$name', not an upgrade script in sql/" ;;
    esac
    [ -f "$name" ] || fail "$name is listed as released and is missing"
    actual=$(sha256sum "$name" | cut -d' ' -f1)
    [ "$actual" = "$hash" ] || fail "$name changed since its release (sha256 $actual, released $hash)"
    n=$((n + 1))
done < "$LIST"
echo "released scripts: $n unchanged"
