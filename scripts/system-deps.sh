#!/usr/bin/env bash
# Install the system packages dask-lsio builds and benchmarks with: liburing-dev (the io_uring
# engine is compiled against it), libblosc-dev, liblz4-dev, libzstd-dev and zlib1g-dev (the
# decode kernel) and fio (the IO benchmark's device ceiling).
# Runs apt-get only when something is missing, we are root, and LSIO_NO_APT is not set;
# otherwise it says what is missing and carries on (the thread engine works without liburing).
set -euo pipefail

missing=()
[ -f /usr/include/liburing.h ] || missing+=(liburing-dev)
[ -f /usr/include/blosc.h ] || missing+=(libblosc-dev)
[ -f /usr/include/lz4.h ] || missing+=(liblz4-dev)
[ -f /usr/include/zstd.h ] || missing+=(libzstd-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v fio >/dev/null 2>&1 || missing+=(fio)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ -z "${LSIO_NO_APT:-}" ]; then
    echo "system-deps: installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # another apt (unattended upgrades, a second setup) may hold its locks: dpkg's lock is
    # waited for by apt itself (2 minutes), the package lists' lock by retrying (18 x 10 s);
    # then it fails with apt's own message
    apt() {
        local tries=0
        until apt-get -o DPkg::Lock::Timeout=120 "$@"; do
            tries=$((tries + 1))
            [ $tries -lt 18 ] || return 1
            echo "system-deps: apt-get $1 failed (another apt holding its lock?), retrying" \
                 "in 10 s" >&2
            sleep 10
        done
    }
    apt update -qq
    apt install -y -qq "${missing[@]}" >/dev/null
else
    echo "system-deps: ${missing[*]} missing and not installed (needs root and apt-get);" \
         "without liburing-dev dask-lsio uses its thread engine, without the codec" \
         "libraries it decodes with numcodecs" >&2
fi
