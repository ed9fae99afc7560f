#!/usr/bin/env bash
# Does the README work on a fresh machine? Builds a Debian 12 (bookworm) root with
# debootstrap (minbase plus python3, python3-pip, python3-venv, git, ca-certificates:
# what a new user starts from), clones this repository into it, and runs the README's
# commands inside it with chroot, printing how far each got:
#   1. bash scripts/install.sh
#   2. .venv/bin/jitgate up, then the psql line it prints, which must return masked rows
#   3. bash scripts/test.sh, which on these machines is expected to stop where a tool must
#      come from the Google Cloud or HashiCorp repositories (unreachable here), naming them
# Not part of CI: it downloads a whole distribution (about 5-10 minutes). Run as root.
#   bash scripts/fresh-machine-check.sh [WORKDIR]
#   FRESH_BASE=/path/to/pristine/root bash scripts/fresh-machine-check.sh   # reuse a debootstrap
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite="${SUITE:-bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
work="${1:-$(mktemp -d /tmp/jitgate-fresh.XXXXXX)}"
R="$work/root"
log="$work/logs"
mkdir -p "$log"
[ "$(id -u)" = 0 ] || { echo "fresh-machine-check: run as root (debootstrap and chroot)" >&2; exit 2; }

say() { printf '\n== %s\n' "$*"; }

# The chroot gets its own /dev (a few nodes and a new devpts instance), never a bind
# mount of the host's: removing a tree that has the host's /dev bound inside it deletes
# the host's device nodes.
mount_all() {
  mount -t proc proc "$R/proc"
  mount -t sysfs sysfs "$R/sys"
  mkdir -p "$R/dev/pts" "$R/dev/shm"
  local spec
  for spec in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $spec
    [ -c "$R/dev/$1" ] || { rm -f "$R/dev/$1"; mknod -m 666 "$R/dev/$1" c "$2" "$3"; }
  done
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
  ln -sf pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
  ln -sfn /proc/self/fd "$R/dev/fd"
  cp /etc/resolv.conf "$R/etc/resolv.conf"
}
# Some networks (this workplace's among them) intercept TLS with their own CA, which the
# host trusts through /usr/local/share/ca-certificates. A new machine on such a network
# would be given the same CA, so the root gets it too; on an open network there is none.
trust_host_cas() {
  local extra=(/usr/local/share/ca-certificates/*.crt)
  [ -e "${extra[0]}" ] || return 0
  mkdir -p "$R/usr/local/share/ca-certificates"
  cp "${extra[@]}" "$R/usr/local/share/ca-certificates/"
  chroot "$R" update-ca-certificates >/dev/null 2>&1
  echo "this network intercepts TLS: trusting the host's extra CA certificates in the root too (${extra[*]##*/})"
}
unmount_all() {
  local m
  # deepest first
  for m in $(findmnt -rn -o TARGET | grep -F "$R/" | sort -r); do umount -l "$m" 2>/dev/null; done
}
trap unmount_all EXIT

say "building a Debian $suite root in $R"
if [ -n "${FRESH_BASE:-}" ]; then
  cp -a "$FRESH_BASE" "$R" || { echo "could not copy $FRESH_BASE"; exit 1; }
  echo "copied the pristine root $FRESH_BASE"
else
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  if ! debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,git,ca-certificates \
        "$suite" "$R" "$mirror" >"$log/debootstrap.log" 2>&1; then
    echo "RESULT debootstrap: FAILED (see $log/debootstrap.log)"; tail -5 "$log/debootstrap.log"; exit 1
  fi
fi
mount_all
trust_host_cas
git clone -q "$root" "$R/opt/jitgate"
echo "cloned $(git -C "$root" rev-parse --short HEAD) into /opt/jitgate; $(chroot "$R" python3 --version)"

in_root() { chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
              LANG=C.UTF-8 TERM=dumb NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt bash -c "cd /opt/jitgate && $1"; }

say "1. bash scripts/install.sh"
start=$(date +%s)
if in_root "bash scripts/install.sh" >"$log/install.log" 2>&1; then
  install_ok=1; echo "RESULT install: OK in $(( $(date +%s) - start )) s"
else
  install_ok=0; echo "RESULT install: FAILED after $(( $(date +%s) - start )) s"
fi
tail -8 "$log/install.log"
echo "node in the root: $(chroot "$R" node --version 2>/dev/null || echo none)"
# The compiled row masking core is built by pip during the install (gcc, python3-dev, libssl-dev).
echo "masking core in the root: $(in_root ".venv/bin/python -c 'from jitgate.masking import rows; print(rows.core_status())'" 2>&1 | tail -1)"

say "2. .venv/bin/jitgate up, then the psql line it prints"
up_ok=0
if [ "$install_ok" = 1 ]; then
  chroot "$R" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt bash -c 'cd /opt/jitgate && exec .venv/bin/jitgate up' >"$log/up.log" 2>&1 &
  up_pid=$!
  for _ in $(seq 1 180); do
    grep -q "Press Ctrl-C to stop" "$log/up.log" && break
    kill -0 "$up_pid" 2>/dev/null || break
    sleep 1
  done
  sed -n '/jitgate is up/,/Press Ctrl-C/p' "$log/up.log"
  line="$(grep -m1 'PGPASSWORD=' "$log/up.log" | sed 's/^ *//')"
  if [ -n "$line" ]; then
    echo "running the printed line with -c 'select id, email from customers order by id limit 2':"
    if in_root "$line -c 'select id, email from customers order by id limit 2'" >"$log/psql.log" 2>&1 \
        && grep -q '\*\*\*@' "$log/psql.log"; then
      up_ok=1; cat "$log/psql.log"; echo "RESULT jitgate up + psql: OK (emails come back masked)"
    else
      cat "$log/psql.log"; echo "RESULT jitgate up + psql: FAILED"
    fi
  else
    tail -20 "$log/up.log"; echo "RESULT jitgate up: FAILED (no psql line printed)"
  fi
  kill -INT "$up_pid" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$up_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$up_pid" 2>/dev/null
else
  echo "RESULT jitgate up: not run (install failed)"
fi

say "3. bash scripts/test.sh (expected to stop at the Google Cloud / HashiCorp downloads here)"
if [ "$install_ok" = 1 ]; then
  start=$(date +%s)
  in_root "timeout 3600 bash scripts/test.sh -x -q" >"$log/test.log" 2>&1
  rc=$?
  grep -E "^test-tools:|^install:|^infra_checks:" "$log/test.log" | tail -12
  tail -4 "$log/test.log"
  echo "RESULT test.sh: exit $rc after $(( $(date +%s) - start )) s"
else
  echo "RESULT test.sh: not run (install failed)"
fi

say "summary"
echo "root: $R   logs: $log"
echo "install: $([ "$install_ok" = 1 ] && echo OK || echo FAILED)   jitgate up + psql: $([ "$up_ok" = 1 ] && echo OK || echo FAILED)"
unmount_all
trap - EXIT
[ "$install_ok" = 1 ] && [ "$up_ok" = 1 ]
