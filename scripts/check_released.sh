#!/usr/bin/env bash
# Released upgrade scripts are frozen: a database that ran one must never
# see it change. sql/released.sha256 lists each released script and its
# SHA-256; this fails if a listed script changed or went missing. A new
# release adds its script to the list (sha256sum sql/secret_vault--A--B.sql
# >> sql/released.sha256) in the commit that ships it.
#
# Usage: check_released.sh [TREE]   (TREE defaults to this repository;
# check_released_test.sh points it at edited copies to show it can fail)
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
if [ ! -s sql/released.sha256 ]; then
    echo "released scripts: none listed"
    exit 0
fi
# Every listed name must be an upgrade script in sql/: a list that names
# something else would freeze nothing.
while read -r _ name; do
    case "$name" in
        sql/secret_vault--*--*.sql) ;;
        *) echo "sql/released.sha256 lists '$name', not an upgrade script in sql/" >&2; exit 1 ;;
    esac
done < sql/released.sha256
if sha256sum --quiet --strict --check sql/released.sha256 2>/dev/null; then
    echo "released scripts: $(wc -l < sql/released.sha256) unchanged"
else
    sha256sum --check sql/released.sha256 2>&1 | grep -v ': OK$' >&2 || true
    echo "a released upgrade script was edited or removed: ship the change as a new upgrade script instead" >&2
    exit 1
fi
