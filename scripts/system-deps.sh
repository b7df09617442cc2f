#!/bin/sh
# Debian packages the test suite needs; installed only when missing (CI runs as root).
# redis-server: the Redis store tests start their own servers and a Cluster from it.
# chromium: the browser tests (tests/browser) drive /usr/bin/chromium through Playwright,
#   never a browser that Playwright downloads; its fontconfig brings fonts-dejavu-core.
# openssl: the rediss:// tests make their own CA and server certificate.
# postgresql: the PostgreSQL store tests run initdb and postgres in a temporary folder;
#   no cluster of the package's own is created or started.
set -eu
missing=""
for pkg in redis-server chromium openssl postgresql; do  # redis-server brings redis-cli
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages:$missing (run as root or: sudo apt-get install$missing)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    case "$missing" in
        *postgresql*)
            # As PostgreSQL's own Docker images do: the common package first, then turn
            # off the cluster the server package would create and start.
            apt-get install -y -qq postgresql-common
            sed -i 's/^#* *create_main_cluster.*/create_main_cluster = false/' \
                /etc/postgresql-common/createcluster.conf
            ;;
    esac
    apt-get install -y -qq $missing
fi
