"""The security section of the readiness checklist: `SECURITY_CHECKS`, in the order they should run.

Black-box probes from REFERENCE.md (a), each a handful of real requests with deadlines,
GET only on control routes, nothing that changes the server's state. References use
the OWASP Top 10 for LLM Applications 2025 ids (garak's tags use the 2023 numbering).

The order matters in two places. The error-leak scan comes after every check that
provokes errors, so it reads their answers too (`security_probe.ERROR_ANSWERS`). The
rate-limit burst comes last: it empties the server's bucket for our key, so anything
after it meets 429s (the checks here wait those out, within a bound).
"""

from __future__ import annotations

from checks.readiness.check import Check
from checks.readiness.security_access import AUTH, CORS, EXPOSED_ROUTES
from checks.readiness.security_consumption import BODY_SIZE, CONTEXT_LIMIT, RATE_LIMIT
from checks.readiness.security_errors import ERROR_LEAKS, MALFORMED
from checks.readiness.security_leak import CANARY, PROMPT_LOG
from checks.readiness.security_tls import TLS

SECURITY_CHECKS: list[Check] = [
    AUTH,
    TLS,
    CORS,
    EXPOSED_ROUTES,
    BODY_SIZE,
    CONTEXT_LIMIT,
    MALFORMED,
    CANARY,
    PROMPT_LOG,
    ERROR_LEAKS,
    RATE_LIMIT,
]

__all__ = ["SECURITY_CHECKS"]
