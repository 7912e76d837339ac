#!/usr/bin/env bash
# Install what the browser test needs besides Python packages: Debian's chromium (Playwright
# drives it; no browser download). Quiet when it is already there; when we are not root with
# apt, do nothing: the browser test then skips with a reason.
set -u
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian package chromium for the browser test ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } ||
    echo "could not install chromium with apt; the browser test will be skipped" >&2
fi
exit 0
