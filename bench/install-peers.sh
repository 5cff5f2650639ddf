#!/usr/bin/env bash
# Installs the benchmark's client (smtp-source, in the postfix package) and, with --peers, its
# peers: Postfix and Dovecot's POP3 server from Debian. Postfix gets "No configuration" from
# debconf so that installing it starts nothing; bench/peers.py writes its own configuration.
set -euo pipefail
pkgs=()
[ -x /usr/sbin/smtp-source ] || pkgs+=(postfix)
if [ "${1:-}" = "--peers" ]; then
  command -v dovecot >/dev/null 2>&1 || pkgs+=(dovecot-core dovecot-pop3d)
fi
[ ${#pkgs[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "bench: need root to install ${pkgs[*]} (apt-get)" >&2
  exit 1
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "postfix postfix/mailname string bench.invalid" | debconf-set-selections
apt-get update -qq
# policy-rc.d 101: the packages' own services are not started on install; the runner starts them.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
[ "$made_policy" = 1 ] && rm -f "$policy"
exit 0
