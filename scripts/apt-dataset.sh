#!/usr/bin/env bash
# Install Debian's dataset package (e.g. dataset-fashion-mnist) when we are root with apt.
# Otherwise do nothing: capsnet then downloads the files itself (checksum-verified).
set -u
name=$1
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian package dataset-$name ..." >&2
  apt-get install -y -qq "dataset-$name" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "dataset-$name" >/dev/null 2>&1; } ||
    echo "could not install dataset-$name with apt; capsnet will try to download it" >&2
fi
exit 0
