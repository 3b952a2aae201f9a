"""The three job computations as pure functions: one entry point, `run(kind, params)`.

Nothing here does I/O, logs or keeps state that changes a result: the same
params give the same result, byte for byte in canonical JSON, everywhere.
"""

from __future__ import annotations

from typing import Any

from app.core.babel import address_to_page, address_to_text, text_to_address
from app.core.babel import encode as babel_encode
from app.core.coherence import score_coherence
from app.core.enumerate import enumerate_candidates
from app.core.governor import evaluate
from app.core.hd import encode as hd_encode_result
from app.core.hd import encode_packed as hd_encode
from app.core.hd import similarity as hd_similarity
from app.core.params import (
    PARAMS_MODELS,
    EncodeParams,
    EnumerateParams,
    EvaluateParams,
    Result,
)

#: The job kinds, in the order of docs/computations.md.
KINDS = ("encode", "enumerate", "evaluate")

__all__ = [
    "KINDS",
    "address_to_page",
    "address_to_text",
    "hd_encode",
    "hd_similarity",
    "run",
    "score_coherence",
    "text_to_address",
    "validate",
]


def _params(kind: str, params: Any) -> EncodeParams | EnumerateParams | EvaluateParams:
    """Validated params model of `kind` (ValueError if the kind is unknown)."""
    try:
        model = PARAMS_MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}") from None
    return model.model_validate(params)


def validate(kind: str, params: Any) -> dict[str, Any]:
    """Params of `kind` with defaults filled; raises pydantic ValidationError or ValueError."""
    return _params(kind, params).model_dump()


def _compute(p: EncodeParams | EnumerateParams | EvaluateParams) -> Result:
    """Dispatch validated params to their computation."""
    if isinstance(p, EncodeParams):
        return babel_encode(p.text) if p.codec == "babel" else hd_encode_result(p.text)
    if isinstance(p, EnumerateParams):
        return enumerate_candidates(p.query, p.max_results, p.depth, p.with_pages)
    return evaluate(p.cycles, p.config)


def run(kind: str, params: Any) -> dict[str, Any]:
    """Validate `params` for `kind` and return the spec's result as a JSON-able dict."""
    return dict(_compute(_params(kind, params)))
