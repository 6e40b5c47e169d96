"""Fields of a job spec only the workflow service sets (``array_task``, ``inputs``, ``pass_outputs``):
refused over HTTP and on the general bus intake, so no caller names a folder that is not its run's
(``inputs`` carries digests of other steps' outputs folders)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trainyard_contracts.spec import SpecError
from trainyard_submission.arrayjobs import array_request, refuse_workflow_fields

pytestmark = [pytest.mark.unit, pytest.mark.workflow, pytest.mark.security]
DIGEST_A = "sha256:" + "a" * 64


@pytest.mark.parametrize("field", ["inputs", "pass_outputs", "array_task"])
def test_only_the_workflow_service_sets_the_step_fields(field: str):
    value: Any = {"inputs": [{"path": "prepare", "digest": DIGEST_A}], "pass_outputs": True}.get(
        field, {"index": 0, "count": 1}
    )
    body = json.dumps({"name": "j", "command": ["true"], field: value})
    with pytest.raises(SpecError) as over_http:
        array_request(body)
    with pytest.raises(SpecError) as over_the_bus:
        refuse_workflow_fields(body.encode())
    assert [e.field for e in over_http.value.errors] == [field]
    assert [e.field for e in over_the_bus.value.errors] == [field]


def test_a_spec_that_only_mentions_the_words_is_not_refused():
    refuse_workflow_fields(b'{"name": "j", "command": ["echo", "inputs", "pass_outputs"]}')
