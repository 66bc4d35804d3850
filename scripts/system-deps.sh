#!/usr/bin/env bash
# System programs some tests start themselves on 127.0.0.1: PostgreSQL (tuner storage) and Chromium (widget
# browser test). Installed with apt-get when running as root and missing; otherwise those tests say what is missing.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then echo "system-deps: not root; missing ${need[*]} (their tests will report it)" >&2; exit 0; fi
echo "installing ${need[*]} with apt-get..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/tmp/qtnb-apt.log 2>&1 || { echo "apt-get install ${need[*]} failed:" >&2; tail -20 /tmp/qtnb-apt.log >&2; exit 1; }
