#!/usr/bin/env bash
# Refresh the C library sources bundled here from the PyPI sdists that carry them (a maintainer's
# tool: building dask-lsio never runs it and needs no network). setup.py compiles these into the
# two cffi extensions when the system -dev packages are missing (see third_party/README.md).
#
#   c-blosc/   c-blosc 1.x with its internal lz4, zlib and zstd: numcodecs' sdist (c-blosc/)
#   liburing/  liburing: the sdist of the PyPI package "liburing" (libs/liburing/)
#   c-blosc/internal-complibs/zstd-*/LICENSE: zstd's BSD licence text, which numcodecs' sdist
#              lacks: backports-zstd's sdist (src/c/zstd/LICENSE)
#
# Usage: bash third_party/update.sh [NUMCODECS_VERSION [LIBURING_VERSION [BACKPORTS_ZSTD_VERSION]]]
# then review `git diff --stat third_party`, rebuild with LSIO_BUNDLED=1 and run the tests.
set -euo pipefail

NUMCODECS=${1:-0.16.6}
LIBURING=${2:-2024.5.3}
BACKPORTS_ZSTD=${3:-1.8.0}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

fetch() {  # the sdist of $1==$2, unpacked in $TMP; prints the unpacked directory
    "$PY" -m pip download -q --no-deps --no-binary "$1" -d "$TMP/dl" "$1==$2" >&2
    local tgz
    tgz=$(ls "$TMP"/dl/*.tar.gz | grep -i "/$(echo "$1" | tr - _)-$2.tar.gz$\|/$1-$2.tar.gz$")
    sha256sum "$tgz" | sed "s|$TMP/dl/||" >>"$TMP/SHA256SUMS"
    tar xzf "$tgz" -C "$TMP"
    echo "$TMP/$(basename "$tgz" .tar.gz)"
}

copy() {  # copy files (paths relative to $1) from $1 to $2, keeping their directories
    local src=$1 dst=$2
    shift 2
    for f in "$@"; do
        mkdir -p "$dst/$(dirname "$f")"
        cp -p "$src/$f" "$dst/$f"
    done
}

NC=$(fetch numcodecs "$NUMCODECS")
LU=$(fetch liburing "$LIBURING")
BZ=$(fetch backports-zstd "$BACKPORTS_ZSTD")

# ---- c-blosc and its internal codecs --------------------------------------------------------
B=$NC/c-blosc
rm -rf "$HERE/c-blosc"
copy "$B" "$HERE/c-blosc" LICENSE.txt README.md
cp -rp "$B/LICENSES" "$HERE/c-blosc/LICENSES"
(cd "$B" && find blosc -maxdepth 1 -name '*.[ch]') | while read -r f; do copy "$B" "$HERE/c-blosc" "$f"; done
LZ4=$(cd "$B" && ls -d internal-complibs/lz4-*)
copy "$B" "$HERE/c-blosc" "$LZ4/lz4.c" "$LZ4/lz4.h" "$LZ4/lz4hc.c" "$LZ4/lz4hc.h"
ZLIB=$(cd "$B" && ls -d internal-complibs/zlib-*)
for f in LICENSE README zlib.h zconf.h zutil.h zutil.c gzguts.h adler32.c compress.c crc32.c crc32.h \
         deflate.c deflate.h inffast.c inffast.h inffixed.h inflate.c inflate.h inftrees.c \
         inftrees.h trees.c trees.h uncompr.c; do
    copy "$B" "$HERE/c-blosc" "$ZLIB/$f"
done
ZSTD=$(cd "$B" && ls -d internal-complibs/zstd-*)
copy "$B" "$HERE/c-blosc" "$ZSTD/README.md" "$ZSTD/zstd.h" "$ZSTD/zstd_errors.h" "$ZSTD/zdict.h"
for d in common compress decompress; do
    (cd "$B" && find "$ZSTD/$d" -maxdepth 1 -type f \( -name '*.[ch]' -o -name '*.S' \)) |
        while read -r f; do copy "$B" "$HERE/c-blosc" "$f"; done
done
cp -p "$BZ/src/c/zstd/LICENSE" "$HERE/c-blosc/$ZSTD/LICENSE"

# ---- liburing --------------------------------------------------------------------------------
L=$LU/libs/liburing
rm -rf "$HERE/liburing"
copy "$L" "$HERE/liburing" LICENSE liburing.spec \
    src/setup.c src/queue.c src/register.c src/syscall.c src/version.c \
    src/lib.h src/syscall.h src/setup.h src/int_flags.h \
    src/include/liburing.h src/include/liburing/barrier.h src/include/liburing/io_uring.h
(cd "$L" && find src/arch -type f -name '*.h') | while read -r f; do copy "$L" "$HERE/liburing" "$f"; done
# what liburing's ./configure writes (compat.h depends on the build machine's kernel headers:
# setup.py generates it at build time, as configure does)
V=$(awk '/^Version:/ {print $2}' "$L/liburing.spec")
cat >"$HERE/liburing/src/include/liburing/io_uring_version.h" <<EOF
/* SPDX-License-Identifier: MIT */
#ifndef LIBURING_VERSION_H
#define LIBURING_VERSION_H

#define IO_URING_VERSION_MAJOR ${V%%.*}
#define IO_URING_VERSION_MINOR ${V#*.}

#endif
EOF

cp "$TMP/SHA256SUMS" "$HERE/SHA256SUMS"
echo "third_party: c-blosc from numcodecs $NUMCODECS, liburing $V from liburing $LIBURING" \
     "(zstd LICENSE from backports-zstd $BACKPORTS_ZSTD); sdist hashes in third_party/SHA256SUMS"
