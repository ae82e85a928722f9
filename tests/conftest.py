"""Suite-wide: one passphrase file for every consortium the tests create (keys are encrypted at rest).

``SECAGG_PASSPHRASE_FILE`` is how an operator hands the key passphrase to ``secagg`` (coordinator.pki.custody);
setting it once here means every key a test writes or loads, in this process or in a subprocess it starts,
uses the same passphrase without a prompt. Tests of a wrong or missing passphrase override it locally.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from coordinator.pki import PASSPHRASE_ENV

if not os.environ.get(PASSPHRASE_ENV):
    _directory = Path(tempfile.mkdtemp(prefix="secagg-tests-passphrase-"))
    atexit.register(shutil.rmtree, _directory, ignore_errors=True)
    _file = _directory / "passphrase"
    _file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    _file.chmod(0o600)
    os.environ[PASSPHRASE_ENV] = str(_file)
