"""Schemathesis against the OpenAPI document: bodies, queries and uploads it makes from the schema never
get a 5xx (a handful of examples per operation, to stay fast)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served_app(serve_runs, tmp_path_factory):
    from muselab.serve.app import create_app
    from muselab.serve.models import Limits

    limits = Limits(max_tokens=32, max_samples=4, max_images=8, max_audio_seconds=3, max_upload_bytes=100_000,
                    max_item_chars=100, max_text_chars=2_000, time_limit_s=60)
    runs = [serve_runs[name] for name in ("poems", "digits", "flute", "reverse")]
    return create_app(runs, gallery=tmp_path_factory.mktemp("schemathesis-gallery"), limits=limits)


@pytest.fixture(scope="module")
def api_schema(served_app):
    loaded = schemathesis.openapi.from_asgi("/openapi.json", served_app)
    # explicit examples and random fuzzing only: the coverage phase walks every boundary of every field (it
    # found the two recipe bugs fixed with this server) and takes over a minute here
    loaded.config.phases.update(phases=["examples", "fuzzing"])
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_the_schema_allows_gets_a_server_error(case) -> None:
    from schemathesis.checks import not_a_server_error

    case.call_and_validate(checks=[not_a_server_error])
