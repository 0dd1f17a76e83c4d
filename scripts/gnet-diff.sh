#!/usr/bin/env bash
# Regenerates third_party/gnet/PATCH.diff: the whole difference between the
# released github.com/panjf2000/gnet/v2 module and the patched copy (code
# and tests), timestamps fixed so that an unchanged tree gives the same file.
# `patch -p1` in a pristine copy of the module applies it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=v2.9.7
dir=$(go mod download -json "github.com/panjf2000/gnet/v2@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "module $version not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$dir" "$tmp/a"
cp -r third_party/gnet "$tmp/b"
chmod -R u+w "$tmp"
# Upstream's community files are not part of the copy; the patch notes are
# not part of the difference.
rm -f "$tmp/a/CODE_OF_CONDUCT.md" "$tmp/a/CONTRIBUTING.md" "$tmp/a/README_ZH.md" "$tmp/b/PATCH.diff" "$tmp/b/PATCHES.md"
find "$tmp/a" "$tmp/b" -exec touch -h -d 2000-01-01T00:00:00Z {} +
(cd "$tmp" && diff -ruN a b) > third_party/gnet/PATCH.diff || [ $? -eq 1 ]
echo "third_party/gnet/PATCH.diff: $(grep -c '^diff ' third_party/gnet/PATCH.diff) files"
