#!/usr/bin/env bash
# design.md §2: the sans-IO and pure crates never depend on tokio, sockets or a logging
# subscriber, and nothing below the binary uses anyhow.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
check() { # crate forbidden...
    local crate=$1; shift
    local tree
    tree=$(cargo tree -p "$crate" -e normal --prefix none --locked 2>/dev/null | awk '{print $1}' | sort -u)
    for bad in "$@"; do
        if grep -qx "$bad" <<<"$tree"; then
            echo "dependency rule broken: $crate depends on $bad"; fail=1
        fi
    done
}
check portcullis-smtp tokio mio socket2 anyhow tracing-subscriber
check portcullis-policy tokio mio socket2 anyhow tracing-subscriber
check portcullis-spool tokio mio anyhow
check portcullis-config tokio mio anyhow
[ "$fail" -eq 0 ] && echo "dependency rules hold"
exit "$fail"
