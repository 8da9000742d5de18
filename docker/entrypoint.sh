#!/bin/sh
# Migrate first (retrying while the database container starts), then run the broker.
set -e
tries=0
until mwl db upgrade; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "mwl: database not reachable after $tries attempts" >&2
        exit 1
    fi
    sleep 2
done
exec mwl "$@"
