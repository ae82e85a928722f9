#!/usr/bin/env bash
# The Debian packages the test suite needs beyond Python: headless Chromium (HTML/PDF report tests),
# poppler-utils (pdftoppm, pdftotext: the PDF report's pages) and postgresql (initdb, pg_ctl, pg_dump,
# pg_restore: the suite starts its own PostgreSQL server for the PostgreSQL store, ledger and backup tests) and
# softhsm2 (a PKCS#11 token for the key-custody tests: tests/coordinator/pki/test_hsm.py). Installs what is missing when run as root
# (CI and fresh machines); otherwise says what to install (those tests then skip, loudly).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v pdftoppm >/dev/null 2>&1 && command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
{ command -v softhsm2-util >/dev/null 2>&1 && [ -f /usr/lib/softhsm/libsofthsm2.so ]; } || missing+=(softhsm2)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: missing Debian packages (${missing[*]}); install them with:" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  echo "the report, PostgreSQL and PKCS#11 tests that need them will be skipped" >&2
fi
