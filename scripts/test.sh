#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing, then runs
# formatting, lints, the dependency rules and every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
need_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "test.sh: installing $2 (for $1)"
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$2" >/dev/null
}
need_pkg swaks swaks
# The STARTTLS tests: OpenSSL's s_client (and RSA test keys from openssl genpkey); swaks
# speaks TLS through Net::SSLeay.
need_pkg openssl openssl
if ! perl -MNet::SSLeay -e1 2>/dev/null; then
    echo "test.sh: installing libnet-ssleay-perl (for swaks --tls)"
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libnet-ssleay-perl >/dev/null
fi
need_pkg python3 python3
# The import test compares its m4 texts with the real m4 over Sendmail's cf files.
need_pkg m4 m4
if [ ! -e /usr/share/sendmail/cf/m4/cf.m4 ]; then
    echo "test.sh: installing sendmail-cf (Sendmail's m4 files only, for the import tests)"
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq sendmail-cf >/dev/null
fi
# The relay tests' independent SMTP/LMTP next hop (crates/server/tests/peers/aiosmtpd_peer.py).
if ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null && ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    echo "test.sh: installing python3-aiosmtpd (for the relay tests)"
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-aiosmtpd >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== dependency rules"
scripts/check-deps.sh
echo "== cargo test"
out="${CARGO_TARGET_DIR:-target}/test-output.txt"
mkdir -p "$(dirname "$out")"
cargo test --workspace --locked 2>&1 | tee "$out"
# One summary line that any CI reader understands.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$out"
