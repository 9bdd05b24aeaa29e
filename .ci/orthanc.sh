#!/usr/bin/env bash
# Debian packages the batch-inference tests (tests/deploy) need: Orthanc with its DICOMweb plugin
# (the PACS the tests start themselves on 127.0.0.1), dicom3tools (dciodvfy checks every SR), and
# nginx-light as the TLS terminator in front of Orthanc (Debian's Orthanc 1.10 crashes in its own TLS
# handshake) for the client-certificate and bearer-token tests; openssl makes their throwaway CA.
# Idempotent: installs only what is missing, then checks the binaries are where the tests look.
set -euo pipefail
need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 \
  || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package from starting a system-wide Orthanc service: the tests start their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
{ command -v Orthanc || ls /usr/sbin/Orthanc; } >/dev/null
command -v dciodvfy >/dev/null
{ command -v nginx || ls /usr/sbin/nginx; } >/dev/null
command -v openssl >/dev/null
echo "orthanc, orthanc-dicomweb, dicom3tools, nginx and openssl present"
