#!/usr/bin/env bash
# Make the TLS certificates and SuperNode authentication keys of a fedcmi deployment.
#
#   deploy/make-certs.sh [OUT_DIR] [NUM_SUPERNODES] [EXTRA_SAN ...]
#
# The one copy of this script lives in the package (fedcmi/runtime/make-certs.sh), so that an installed fedcmi
# has it too (fedcmi.runtime.loopback runs it; an installed wheel has no deploy/ folder); deploy/make-certs.sh,
# what the compose stack and the docs name, runs this file. Needs bash, openssl and ssh-keygen.
#
# OUT_DIR (default deploy/certs) gets:
#   ca.crt ca.key                 a private CA (give ca.crt to every SuperNode and to the `flwr` CLI)
#   server.pem server.key         the SuperLink's certificate, valid for 127.0.0.1, localhost, superlink
#                                 and any EXTRA_SAN (DNS names or IP addresses of the SuperLink machine)
#   supernode-<i> supernode-<i>.pub   one OpenSSH ECDSA P-384 key pair per SuperNode (i = 0..N-1);
#                                 register each .pub with `flwr supernode register`
#   superexec.secret              the shared secret between the SuperLink and the SuperExec that starts the
#                                 ServerApps (`--superexec-auth-secret-file`): without it, anyone who reaches
#                                 the SuperLink's port could take a run's ServerApp task and play the server
# Existing files are kept, so re-running never invalidates keys that are already registered.
#
# Modes: private keys (ca.key, server.key, supernode-<i>, superexec.secret) 0600, certificates and .pub
# files 0644, a new OUT_DIR 0700; all owned by the user running this. Containers need nothing more: docker-compose.yml mounts
# each container's own files read-only and the image's entrypoint copies them to its unprivileged user.
set -euo pipefail
umask 077

out="${1:-deploy/certs}"
nodes="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
days="${CERT_DAYS:-365}"

mkdir -p -m 0700 "$out"
cd "$out"

san="DNS:localhost,DNS:superlink,IP:127.0.0.1"
for extra in "$@"; do
  if [[ "$extra" =~ ^[0-9.]+$ || "$extra" == *:* ]]; then san="$san,IP:$extra"; else san="$san,DNS:$extra"; fi
done

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
    -subj "/CN=fedcmi-ca" 2>/dev/null
fi
if [[ ! -f server.pem ]]; then
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=superlink" 2>/dev/null
  printf 'subjectAltName=%s\n' "$san" > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem \
    -days "$days" -extfile server.ext 2>/dev/null
  rm -f server.csr server.ext
fi
for ((i = 0; i < nodes; i++)); do
  if [[ ! -f "supernode-$i" ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedcmi-supernode-$i" -f "supernode-$i"
  fi
done
if [[ ! -f superexec.secret ]]; then
  openssl rand -hex 32 | tr -d '\n' > superexec.secret
fi
chmod 0600 ca.key server.key superexec.secret
chmod 0644 ca.crt server.pem
for ((i = 0; i < nodes; i++)); do
  chmod 0600 "supernode-$i"
  chmod 0644 "supernode-$i.pub"
done
echo "certificates and keys in $(pwd): CA ca.crt, SuperLink server.pem/server.key ($san), $nodes SuperNode key(s)"
