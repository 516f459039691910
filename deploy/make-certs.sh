#!/usr/bin/env bash
# Make the TLS certificates and SuperNode authentication keys of a fedcmi deployment:
#
#   deploy/make-certs.sh [OUT_DIR] [NUM_SUPERNODES] [EXTRA_SAN ...]
#
# The script itself ships inside the package, fedcmi/runtime/make-certs.sh (what it writes, their modes), so
# that an installed fedcmi has it too; this path, which the compose stack and the docs name, runs that file.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../fedcmi/runtime/make-certs.sh" "$@"
