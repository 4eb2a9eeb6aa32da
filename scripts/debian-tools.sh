#!/usr/bin/env bash
# Make the commands a Debian package provides available for the tests:
#   bash scripts/debian-tools.sh "PACKAGE..." COMMAND...
# `make test` runs it for `prometheus` (promtool and prometheus: tests/deploy checks the alert
# rules and the dashboard's queries, tests/e2e has a Prometheus scrape a worker), for
# `docker-compose` (tests/deploy validates docker-compose.yml with `docker-compose config`)
# and for Go with amqp091-go (tests/e2e runs the Go example of docs/wire-format.md).
# Installs the package when a command is missing and we may (root, or passwordless sudo).
# When it cannot be installed, CI (CI=true) fails; elsewhere this says so and the tests that
# need the commands skip.
set -u

if [[ $# -lt 2 ]]; then
  echo "usage: $0 \"PACKAGE...\" COMMAND..." >&2
  exit 2
fi
package=$1
read -ra packages <<<"$package"
shift
commands=("$@")

have_all() {
  local command
  for command in "${commands[@]}"; do
    # Only the system's commands count: a virtual environment's may shadow them.
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v "$command" \
      >/dev/null || return 1
  done
}

if have_all; then
  echo "$package: ${commands[*]} present"
  exit 0
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    as_root=(none)
  fi
fi

reason="installing it needs apt-get and root or passwordless sudo"
if command -v apt-get >/dev/null && [[ ${as_root[0]:-} != none ]]; then
  reason="apt-get could not install it"
  echo "$package: installing Debian's $package package"
  # A package's postinst may fail to start a service without systemd (prometheus does);
  # the commands are all the tests need, so that failure is not fatal by itself.
  "${as_root[@]}" apt-get update -qq >/dev/null &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null ||
    echo "$package: apt-get reported errors"
fi

if have_all; then
  echo "$package: installed ${commands[*]}"
  exit 0
fi

message="$package: ${commands[*]} missing ($reason); install Debian's $package package,"
message+=" or put the commands on PATH"
ci=${CI:-}
if [[ ${ci,,} == true ]]; then
  echo "$message" >&2
  exit 1
fi
echo "$message; the tests that need them will skip"
exit 0
