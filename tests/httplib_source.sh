#!/usr/bin/env bash
# Usage: tests/httplib_source.sh VERSION SUITE [DEST_DIR]
# Fetches cpp-httplib's source package, upstream version VERSION, from the Debian suite SUITE
# (trixie has 0.18.7, sid 0.41.0) into DEST_DIR (default build/httplib-VERSION) and prints the
# folder that holds its header-only httplib.h. Cached: a second run only prints the folder.
#
# apt-get runs with a private apt directory (its own sources.list with one deb-src line for
# SUITE, lists and cache under DEST_DIR/apt): the system's sources and lists stay untouched.
# Needs apt-get and dpkg-source (package dpkg-dev); no root.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 VERSION SUITE [DEST_DIR]   (e.g. 0.18.7 trixie, 0.41.0 sid)" >&2
  exit 2
fi
version=$1
suite=$2
dest=${3:-build/httplib-$version}
case "$dest" in /*) ;; *) dest="$PWD/$dest" ;; esac

header_dir() { find "$dest/src" -maxdepth 2 -name httplib.h -printf '%h\n' 2>/dev/null | head -n 1; }

if [ -n "$(header_dir)" ]; then
  header_dir
  exit 0
fi

apt_dir="$dest/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dest/src"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian $suite main" >"$apt_dir/sources.list"
apt_options=(
  -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::State::status=$apt_dir/status"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=$(id -un)"
)
: >"$apt_dir/status"
apt-get "${apt_options[@]}" -qq update >&2
# Exactly the asked upstream version (a Debian repack may add "+ds"), whatever its Debian
# revision is in the suite.
full=$(apt-cache "${apt_options[@]}" showsrc cpp-httplib | sed -n 's/^Version: //p' | grep -m1 -E "^${version//./\\.}(\+[a-z0-9.]+)?-" || true)
if [ -z "$full" ]; then
  echo "cpp-httplib $version is not in $suite's sources (found: $(apt-cache "${apt_options[@]}" showsrc cpp-httplib | sed -n 's/^Version: //p' | tr '\n' ' '))" >&2
  exit 1
fi
(cd "$dest/src" && apt-get "${apt_options[@]}" -qq --download-only source "cpp-httplib=$full" >&2 &&
  dpkg-source --no-check -x cpp-httplib_*.dsc >/dev/null)
if [ -z "$(header_dir)" ]; then
  echo "no httplib.h in the unpacked cpp-httplib $full" >&2
  exit 1
fi
header_dir
