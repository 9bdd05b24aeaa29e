#!/usr/bin/env bash
# Debian packages the batch-inference tests (tests/deploy) need: Orthanc with its DICOMweb plugin
# (the PACS the tests start themselves on 127.0.0.1) and dicom3tools (dciodvfy checks every SR).
# Idempotent: installs only what is missing, then checks the binaries are where the tests look.
set -euo pipefail
need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 \
  || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
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
echo "orthanc, orthanc-dicomweb and dicom3tools present"
