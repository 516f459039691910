#!/bin/sh
# Entrypoint of the fedcmi image: give the mounted keys to the unprivileged user, then run the command as it.
#
# The compose file bind-mounts each container's own files (read-only, one file per mount) under
# $FEDCMI_CERTS_MOUNT (default /run/fedcmi/certs). On the host they belong to whoever ran
# deploy/make-certs.sh and the private keys are mode 0600, so uid 1000 in the container cannot read them
# unless the host user happens to be uid 1000 too. The container therefore starts as root (which can read
# them: rootful Docker/Podman, and rootless engines where container root is the host user), copies the files
# to $FEDCMI_CERTS_DIR (default /app/certs) owned by $FEDCMI_USER (default app, uid APP_UID) with mode
# 0400, and drops to that user with setpriv. The host files are never modified.
#
# Started as a non-root user instead (`docker run --user`, compose `user:`), it copies what that user can
# read into $FEDCMI_CERTS_DIR (which must be writable by it) and runs the command without switching user.
# A file that cannot be read stops the container with exit code 77 and a line naming the file.
set -eu

src="${FEDCMI_CERTS_MOUNT:-/run/fedcmi/certs}"
dst="${FEDCMI_CERTS_DIR:-/app/certs}"
user="${FEDCMI_USER:-app}"
me="$(id -u)"

if [ -d "$src" ]; then
  if [ "$me" = 0 ]; then
    group="$(id -gn "$user")"
    install -d -m 0700 -o "$user" -g "$group" "$dst"
  elif ! mkdir -p "$dst" 2>/dev/null || [ ! -w "$dst" ]; then
    echo "fedcmi-entrypoint: uid $me cannot write $dst; start the container as root (the default)" >&2
    exit 77
  fi
  for f in "$src"/*; do
    [ -f "$f" ] || continue
    if [ ! -r "$f" ]; then
      echo "fedcmi-entrypoint: uid $me cannot read $f (mounted from the host); start the container as root" \
           "(the default) or make the file readable by uid $me" >&2
      exit 77
    fi
    if [ "$me" = 0 ]; then
      install -m 0400 -o "$user" -g "$group" "$f" "$dst/"
    else
      install -m 0400 "$f" "$dst/"
    fi
  done
fi

if [ "$me" = 0 ] && [ "$user" != root ]; then
  exec setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$@"
fi
exec "$@"
