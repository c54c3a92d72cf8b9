"""``needs_sandbox``: skip a test where the namespace sandbox cannot run (shared by the sandbox,
attack and code-verifier tests)."""

import pytest

from iprime.verifiers.sandbox import check_isolation_available

try:
    check_isolation_available("namespaces")
    HAVE_NAMESPACES = True
except Exception:  # noqa: BLE001 - any reason means the isolation tests cannot run
    HAVE_NAMESPACES = False

needs_sandbox = pytest.mark.skipif(not HAVE_NAMESPACES, reason="namespace sandbox needs root + unshare")
