#!/usr/bin/env bash
# Keep the shipped weights off the device machine. Its copy of the working tree (tracked
# files, untracked files git does not ignore, carried paths) may hold 64 MiB; the tracked
# tree holds 84.5 MB, 66 MB of them src/capsnet/pretrained/*/*.safetensors, which no device
# check needs. Tracked files always travel, ignored ones only when carried, so:
#   scripts/device_tree.sh strip    before the device call: the weights leave the index
#                                   (git rm --cached: the files stay on disk, untouched)
#                                   and are ignored (a block of .git/info/exclude); a
#                                   pre-commit hook refuses commits meanwhile, as one would
#                                   commit the weights' deletion
#   scripts/device_tree.sh restore  right after the call, whatever its outcome: the index
#                                   entries back from HEAD, the exclude block and the hook
#                                   removed (nothing to do when not stripped)
#   scripts/device_tree.sh status   stripped or not, and the bytes that would travel
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

WEIGHTS='src/capsnet/pretrained/*.safetensors'
MARK='capsnet scripts/device_tree.sh strip'
EXCLUDE=$(git rev-parse --git-path info/exclude)
HOOK=$(git rev-parse --git-path hooks/pre-commit)

stripped() { [ -f "$EXCLUDE" ] && grep -qxF "# $MARK: begin" "$EXCLUDE"; }

# The paths listed in the exclude block (each written there as /PATH).
stripped_paths() { sed -n "\\|^# $MARK: begin\$|,\\|^# $MARK: end\$|{\\|^/|s|^/||p}" "$EXCLUDE"; }

travelling_bytes() {
  git ls-files -z --cached --others --exclude-standard |
    xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

strip() {
  if stripped; then
    echo "already stripped; run: $0 restore" >&2
    exit 1
  fi
  if [ -e "$HOOK" ]; then
    echo "$HOOK exists; refusing to replace it" >&2
    exit 1
  fi
  mapfile -t paths < <(git ls-files -- "$WEIGHTS")
  if [ "${#paths[@]}" -eq 0 ]; then
    echo "no tracked files match $WEIGHTS" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$EXCLUDE")" "$(dirname "$HOOK")"
  {
    echo "# $MARK: begin"
    printf '/%s\n' "${paths[@]}"
    echo "# $MARK: end"
  } >>"$EXCLUDE"
  printf '#!/bin/sh\n# %s\necho "commit refused: the pretrained weights are out of the index for a device call; run scripts/device_tree.sh restore first" >&2\nexit 1\n' "$MARK" >"$HOOK"
  chmod +x "$HOOK"
  git rm -q --cached -- "${paths[@]}"
  echo "stripped ${#paths[@]} files from the index; $(travelling_bytes) bytes would travel"
}

restore() {
  if ! stripped; then
    echo "not stripped; nothing to restore"
    return
  fi
  mapfile -t paths < <(stripped_paths)
  git restore --staged -- "${paths[@]}"
  sed -i "\\|^# $MARK: begin\$|,\\|^# $MARK: end\$|d" "$EXCLUDE"
  if grep -qF "# $MARK" "$HOOK" 2>/dev/null; then
    rm -f "$HOOK"
  fi
  echo "restored ${#paths[@]} files to the index"
}

case "${1:-}" in
  strip) strip ;;
  restore) restore ;;
  status)
    if stripped; then echo "stripped"; else echo "not stripped"; fi
    echo "$(travelling_bytes) bytes would travel (limit $((64 * 1024 * 1024)))"
    ;;
  *)
    echo "usage: $0 strip|restore|status" >&2
    exit 2
    ;;
esac
