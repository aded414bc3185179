#!/bin/sh
# test_install.sh: libetmoe as an outside project sees it. Installs this build into a temporary
# DESTDIR, checks that only the public header (include/etmoe.h) and no internal one was installed,
# builds tests/outside/forward.c with nothing but `pkg-config --cflags --libs etmoe` and runs it:
# one backend op, a tiny model saved, loaded and run forward and backward, its dump file written.
set -eu
: "${ETM_TEST_DIR:?run by make check}"
make=${ETM_MAKE:-make}
cc=${ETM_CC:-cc}
# The build's CFLAGS too: a sanitizer build's library needs the sanitizer runtime in the program.
cflags=${ETM_CFLAGS:-}
pkgconfig=${PKG_CONFIG:-pkg-config}
dest=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-install-XXXXXX")
trap 'rm -rf "$dest"' EXIT
fail() { echo "test_install: $*" >&2; exit 1; }

# The nested make must not join make check's job server (its descriptors are not ours).
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL $make -s install DESTDIR="$dest" >"$dest/install.log" 2>&1 ||
  { cat "$dest/install.log" >&2; fail "make install DESTDIR=$dest failed"; }

pcfile=$(find "$dest" -name etmoe.pc | head -n 1)
[ -n "$pcfile" ] || fail "no etmoe.pc installed"
headers=$(cd "$dest" && find . -name '*.h' | sort)
[ "$(echo "$headers" | sed 's|.*/||')" = "etmoe.h" ] || fail "installed headers are not exactly etmoe.h: $headers"
[ -n "$(find "$dest" -name 'libetmoe.so.*')" ] || fail "no versioned libetmoe.so installed"

# pkg-config reads the installed file; the sysroot variable puts its paths under DESTDIR.
PKG_CONFIG_PATH=$(dirname "$pcfile")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
PKG_CONFIG_SYSROOT_DIR=$dest
export PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
flags=$($pkgconfig --cflags --libs etmoe) || fail "pkg-config --cflags --libs etmoe failed"
echo "pkg-config --cflags --libs etmoe: $flags"
$cc $cflags -std=c99 -Wall -Wextra -Werror -o "$dest/forward" "$ETM_TEST_DIR/outside/forward.c" $flags -lm ||
  fail "the outside program does not build against the installed library"
libdir=$(dirname "$(dirname "$pcfile")") # the installed libdir (etmoe.pc is in libdir/pkgconfig)
LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$dest/forward" "$dest" ||
  fail "the outside program failed"
# The program ran on the installed copy, not on the build tree's.
LD_LIBRARY_PATH=$libdir ldd "$dest/forward" | grep libetmoe | grep -q "$dest" ||
  fail "the outside program did not load the installed libetmoe"
echo "test_install: ok"
