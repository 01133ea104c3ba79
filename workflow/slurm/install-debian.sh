#!/usr/bin/env bash
# Install Slurm and munge from Debian's packages and start the single-node cluster used by the tests.
# Run as root on Debian (12 ships Slurm 22.05). Safe to run again: packages already installed are not
# fetched again, and a running cluster is left as it is.
#
#   workflow/slurm/install-debian.sh            # install, then start (start-local-slurm.sh)
#   workflow/slurm/install-debian.sh --no-start # install only
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGES=(munge slurmctld slurmd slurm-client)

[ "$(id -u)" -eq 0 ] || { echo "install-debian: run as root" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "install-debian: apt-get not found (Debian or Ubuntu only)" >&2; exit 1; }

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query --show --showformat='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed ||
        missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    # No recommends: they pull in a mail server and documentation, none of which a node needs.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "${1:-}" = "--no-start" ] || bash "$HERE/start-local-slurm.sh"
