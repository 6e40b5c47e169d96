"""The outputs.json a succeeded attempt leaves: read below the work dir without following a link
the job planted, checked, refused with a reason (never raised)."""

from __future__ import annotations

import os

import pytest

from trainyard_executor.outputsfile import read_outputs

pytestmark = [pytest.mark.unit, pytest.mark.security]


@pytest.fixture
def outputs(tmp_path):
    folder = tmp_path / "work" / "outputs"
    folder.mkdir(parents=True)
    return folder


def test_a_good_file_is_read(outputs):
    (outputs / "outputs.json").write_text('{"accuracy": 0.9, "split": "a"}')
    assert read_outputs(outputs, "outputs") == ({"accuracy": 0.9, "split": "a"}, None)


def test_no_file_is_no_outputs_and_no_complaint(outputs):
    assert read_outputs(outputs, "outputs") == (None, None)


def test_a_link_to_a_host_file_is_refused_not_followed(outputs, tmp_path):
    host = tmp_path / "host-secret.json"
    host.write_text('{"token": "s3cret"}')
    os.symlink(host, outputs / "outputs.json")
    found, why = read_outputs(outputs, "outputs")
    assert found is None and "symbolic link" in (why or "")


def test_an_outputs_folder_replaced_by_a_link_is_refused(tmp_path):
    host = tmp_path / "elsewhere"
    host.mkdir()
    (host / "outputs.json").write_text('{"token": "s3cret"}')
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(host, work / "outputs")
    found, why = read_outputs(work / "outputs", "outputs")
    assert found is None and "symbolic link" in (why or "")


def test_a_fifo_is_refused_without_blocking(outputs):
    os.mkfifo(outputs / "outputs.json")
    found, why = read_outputs(outputs, "outputs")
    assert found is None and "not a regular file" in (why or "")


def test_a_bad_document_is_refused_with_the_reason(outputs):
    (outputs / "outputs.json").write_text('{"a": {"nested": 1}}')
    assert read_outputs(outputs, "outputs") == (
        None,
        "outputs.json: a must be a string, number or true/false",
    )


def test_a_nested_outputs_path_is_walked_from_the_work_dir(tmp_path):
    folder = tmp_path / "work" / "out" / "model"
    folder.mkdir(parents=True)
    (folder / "outputs.json").write_text('{"v": 1}')
    assert read_outputs(folder, "out/model") == ({"v": 1}, None)
