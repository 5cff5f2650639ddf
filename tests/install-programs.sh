#!/bin/sh
# Installs the Debian packages of tests/programs.txt whose program is missing, where it can: on
# Debian or Ubuntu, as root. Elsewhere it installs nothing and names the packages; the tests that
# need them are then skipped (and fail under CI). With --strict a failed install is an error.
set -u
cd "$(dirname "$0")"
strict=0
[ "${1:-}" = "--strict" ] && strict=1

missing=$(grep -v '^#' programs.txt | while read -r program package; do
  [ -n "$program" ] || continue
  command -v "$program" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$program" >/dev/null 2>&1 || echo "$package"
done | sort -u | tr '\n' ' ' | sed 's/ $//')
[ -n "$missing" ] || exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing the Debian packages the tests use: $missing"
  # Postfix (the interop peer) installed without a system configuration: the test runs its own.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
  # shellcheck disable=SC2086
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; then
    exit 0
  fi
  echo "apt-get could not install: $missing" >&2
  [ "$strict" = 1 ] && exit 1
  exit 0
fi
[ "$strict" = 1 ] && { echo "missing and not installable here (not root, or no apt-get): $missing" >&2; exit 1; }
echo "Not installed, so the tests that need them are skipped: $missing (as root: apt-get install $missing)"
exit 0
