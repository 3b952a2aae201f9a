"""The CLI's input handling, and its errors when nothing is running: no servers needed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import CliError, parse_params, parse_value
from app.client import BabelqError, ndjson_body
from app.ops.supervisor import free_port


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("0.25", 0.25),
        ("true", True),
        ("null", None),
        ('{"max_cycles": 3}', {"max_cycles": 3}),
        ("[1, 2]", [1, 2]),
        ('"123"', "123"),
        ("hello world", "hello world"),
        ("", ""),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("{not json", "{not json"),
    ],
)
def test_param_values_are_json_when_they_parse_and_text_otherwise(
    raw: str, expected: object
) -> None:
    assert parse_value(raw) == expected


def test_params_merge_json_object_then_pairs_with_dotted_keys_nesting() -> None:
    params = parse_params(
        ["query=hello world", "max_results=5", "config.max_cycles=2", "with_pages=false"],
        '{"depth": 2, "config": {"risk_threshold": 0.5}, "query": "replaced"}',
    )
    assert params == {
        "query": "hello world",
        "max_results": 5,
        "depth": 2,
        "with_pages": False,
        "config": {"risk_threshold": 0.5, "max_cycles": 2},
    }


def test_value_may_contain_equals_signs() -> None:
    assert parse_params(["text=a=b"]) == {"text": "a=b"}


@pytest.mark.parametrize(
    ("pairs", "base", "message"),
    [
        (["text"], None, "expected key=value"),
        (["=x"], None, "expected key=value"),
        (["a..b=1"], None, "expected key=value"),
        (["a=1", "a.b=2"], None, "already a value"),
        ([], "{bad", "not valid JSON"),
        ([], "[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_params_are_usage_errors(pairs: list[str], base: str | None, message: str) -> None:
    with pytest.raises(CliError, match=message) as caught:
        parse_params(pairs, base)
    assert caught.value.code == 2


def test_batch_body_streams_dicts_and_lines_as_ndjson() -> None:
    sent: list[int] = []
    items: list[dict[str, Any] | str | bytes] = [
        {"kind": "encode", "params": {"text": "ä"}},
        '{"kind": "encode"}',
        b"{}\n",
    ]
    body = b"".join(ndjson_body(items, sent.append))
    lines = body.decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"kind": "encode", "params": {"text": "ä"}},
        {"kind": "encode"},
        {},
    ]
    assert sum(sent) == len(body)


def test_batch_body_reads_a_file_in_chunks_without_loading_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.ndjson"
    line = b'{"kind":"encode","params":{"text":"hello world"}}\n'
    path.write_bytes(line * 20_000)
    sent: list[int] = []
    chunks = list(ndjson_body(path, sent.append))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= 256 * 1024
    assert b"".join(chunks) == path.read_bytes() and sum(sent) == path.stat().st_size
    assert b"".join(ndjson_body(io.BytesIO(line), None)) == line


def test_api_error_bodies_become_babelq_errors() -> None:
    body = {
        "error": {
            "code": "invalid",
            "message": "invalid field(s): params.text",
            "details": [{"field": "params.text", "message": "too long"}],
        }
    }
    err = BabelqError.from_response(httpx.Response(422, json=body))
    assert (err.status, err.code, err.details[0]["field"]) == (422, "invalid", "params.text")
    plain = BabelqError.from_response(httpx.Response(502, text="Bad Gateway"))
    assert (plain.status, plain.code, plain.message) == (502, "http_error", "Bad Gateway")


# The command line as a user runs it ----------------------------------------------------


def babelq(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `babelq ARGS` with only the given BABELQ_* settings (and a private home)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BABELQ_")}
    clean.update({"BABELQ_HOME": str(tmp_path / ".babelq"), **env})
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_json_params_exit_2_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    done = babelq(tmp_path, "submit", "encode", '{"text": ', BABELQ_API_KEY="k")
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_api_says_to_start_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = babelq(tmp_path, "status", "1", BABELQ_API_URL=url, BABELQ_API_KEY="k")
    assert done.returncode == 1
    assert "babelq up" in done.stderr and "Traceback" not in done.stderr


def test_missing_api_key_is_a_usage_error(tmp_path: Path) -> None:
    done = babelq(tmp_path, "status", "1")
    assert done.returncode == 2 and "BABELQ_API_KEY" in done.stderr


def test_flower_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    done = babelq(tmp_path, "flower", BABELQ_REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode == 2 and "BABELQ_FLOWER_PASSWORD" in done.stderr


def test_flower_refuses_placeholder_password_in_production(tmp_path: Path) -> None:
    done = babelq(
        tmp_path,
        "flower",
        BABELQ_ENV="production",
        BABELQ_FLOWER_USER="ops",
        BABELQ_FLOWER_PASSWORD="changeme",
        BABELQ_REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert done.returncode == 2 and "placeholder" in done.stderr


def test_worker_rejects_unknown_queues(tmp_path: Path) -> None:
    done = babelq(tmp_path, "worker", "-Q", "encode,nope")
    assert done.returncode == 2 and "nope" in done.stderr


def test_keys_create_refuses_a_tenant_name_the_api_would_refuse(tmp_path: Path) -> None:
    done = babelq(
        tmp_path,
        "keys",
        "create",
        "--tenant",
        "two words",
        BABELQ_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    assert done.returncode == 2 and "tenant" in done.stderr
