#!/bin/sh
# Debian packages the test suite needs; installed only when missing (CI runs as root).
# redis-server: the Redis store tests start their own servers and a Cluster from it.
# chromium: the browser tests (tests/browser) drive /usr/bin/chromium through Playwright,
#   never a browser that Playwright downloads; its fontconfig brings fonts-dejavu-core.
# openssl: the rediss:// tests make their own CA and server certificate.
set -eu
missing=""
for pkg in redis-server chromium openssl; do  # redis-server brings redis-cli
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages:$missing (run as root or: sudo apt-get install$missing)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
