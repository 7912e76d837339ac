#!/usr/bin/env bash
# Install a Debian package the project can use (a data set, the browser for the browser test)
# when we are root with apt; otherwise, or if apt fails, say what happens instead and go on.
#   bash scripts/apt-install.sh PACKAGE "WHAT HAPPENS WITHOUT IT"
set -u
package=$1 fallback=$2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian package $package ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$package" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$package" >/dev/null 2>&1; } ||
    echo "could not install $package with apt; $fallback" >&2
fi
exit 0
