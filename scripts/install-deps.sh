#!/usr/bin/env bash
# Install what petrel needs to build, test and benchmark on Debian 12.
# Idempotent: installs only missing packages. Starts no daemon: a policy-rc.d
# guard stops maintainer scripts from launching postfix, dnsmasq and friends.
set -euo pipefail

BUILD_PKGS=(g++ make pkg-config libevent-dev libssl-dev libyaml-cpp-dev
            doctest-dev libcrypt-dev libpcre2-dev)
TEST_PKGS=(python3 python3-pytest swaks libnet-ssleay-perl libauthen-sasl-perl curl openssl postfix dnsmasq-base iproute2 strace
           dovecot-core dovecot-lmtpd haproxy python3-milter
           opendkim opendkim-tools spamassassin spamd spamc spamass-milter python3-dkim)

want=("${BUILD_PKGS[@]}")
if [ "${1:-}" != "--build-only" ]; then
  want+=("${TEST_PKGS[@]}")
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "install-deps: installing ${missing[*]}" >&2
guard=/usr/sbin/policy-rc.d
placed_guard=0
if [ ! -e "$guard" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$guard" >/dev/null
  $SUDO chmod 755 "$guard"
  placed_guard=1
fi
cleanup() { if [ "$placed_guard" = 1 ]; then $SUDO rm -f "$guard"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# spamassassin's postinst imports the sa-update signing key with gpg, which
# autostarts a gpg-agent (as debian-spamd) that outlives the install: stop it.
sa_keys=/var/lib/spamassassin/sa-update-keys
if [ -S "$sa_keys/S.gpg-agent" ] && command -v gpgconf >/dev/null; then
  $SUDO runuser -u debian-spamd -- gpgconf --homedir "$sa_keys" --kill gpg-agent || true
fi
