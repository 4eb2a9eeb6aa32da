#!/usr/bin/env bash
# Make `promtool` and `prometheus` available: tests/deploy checks the alert rules and the
# dashboard's queries with them. Installs Debian's `prometheus` package when they are missing
# and we may (root, or passwordless sudo). When they cannot be installed, CI (CI=true) fails;
# elsewhere this says so and the tests that need them skip.
set -u

have_tools() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null
}

if have_tools; then
  echo "prometheus: $(promtool --version 2>&1 | head -n 1)"
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

reason="installing them needs apt-get and root or passwordless sudo"
if command -v apt-get >/dev/null && [[ ${as_root[0]:-} != none ]]; then
  reason="apt-get could not install them"
  echo "prometheus: installing Debian's prometheus package (promtool, prometheus)"
  # The package's postinst cannot start a service without systemd; the binaries are all
  # the tests need, so that failure is not fatal.
  "${as_root[@]}" apt-get update -qq >/dev/null &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
    echo "prometheus: apt-get reported errors (a service that cannot start here is expected)"
fi

if have_tools; then
  echo "prometheus: installed $(promtool --version 2>&1 | head -n 1)"
  exit 0
fi

message="prometheus: promtool and prometheus are missing ($reason); install Debian's"
message+=" prometheus package, or put them on PATH"
ci=${CI:-}
if [[ ${ci,,} == true ]]; then
  echo "$message" >&2
  exit 1
fi
echo "$message; the tests that need them will skip"
exit 0
