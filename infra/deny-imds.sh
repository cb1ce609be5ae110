#!/usr/bin/env bash
# deny_imds USER: no process of USER can reach the instance metadata service (169.254.169.254 and
# fd00:ec2::254), where the instance role's credentials are: the user's sub-tasks must not hold
# the fleet's keys. nftables where it is installed, else iptables; without either it fails (and
# the bootstrap then fails the boot: no sub-task runs unconfined). The bootstrap carries this
# function in the user-data; run as a script it applies the rule for its argument.
deny_imds() {
  local user=$1 uid
  uid=$(id -u "$user") || return 1
  if command -v nft > /dev/null; then
    nft -f - <<NFT
table inet pyanamo_imds {
  chain output {
    type filter hook output priority 0; policy accept;
    meta skuid $uid ip daddr 169.254.169.254 reject
    meta skuid $uid ip6 daddr fd00:ec2::254 reject
  }
}
NFT
  elif command -v iptables > /dev/null; then
    iptables -A OUTPUT -m owner --uid-owner "$uid" -d 169.254.169.254 -j REJECT
    if command -v ip6tables > /dev/null; then
      ip6tables -A OUTPUT -m owner --uid-owner "$uid" -d fd00:ec2::254 -j REJECT
    fi
  else
    echo "deny_imds: neither nft nor iptables: cannot keep $user away from the metadata service" >&2
    return 1
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  deny_imds "$@"
fi
