"""Property test of the HTTP service from its own OpenAPI schema (schemathesis + hypothesis).

Schemathesis generates requests from ``/openapi.json`` (valid and invalid bodies, path
parameters) and every response must be a documented status with a body that matches the
documented schema, and never a 5xx: bad input is always the client's 4xx.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from llmrec.recommender import Recommender  # noqa: E402
from llmrec.serve import create_app  # noqa: E402
from tests.fixtures_run import build_decoder_run  # noqa: E402

# Built at import: schemathesis parametrizes from the app's live schema, before fixtures run.
_TMP = Path(tempfile.mkdtemp(prefix="llmrec-schemathesis-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_RUN = build_decoder_run(_TMP)
APP = create_app(lambda: Recommender.load(_RUN, device="cpu"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
EXAMPLES = int(os.environ.get("LLMREC_SCHEMATHESIS_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case):
    response = case.call()
    case.validate_response(response, checks=CHECKS)
