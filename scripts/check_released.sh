#!/usr/bin/env bash
# Released upgrade scripts are frozen: a database that ran one must never
# see it change. sql/released.sha256 lists each released script and its
# SHA-256; this fails if a listed script changed or went missing. A new
# release adds its script to the list (sha256sum sql/secret_vault--A--B.sql
# >> sql/released.sha256) in the commit that ships it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -s sql/released.sha256 ]; then
    echo "released scripts: none listed"
    exit 0
fi
if sha256sum --quiet --check sql/released.sha256; then
    echo "released scripts: $(wc -l < sql/released.sha256) unchanged"
else
    echo "a released upgrade script was edited: ship the change as a new upgrade script instead" >&2
    exit 1
fi
