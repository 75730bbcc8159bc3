"""One answer per request, however Triton batched them: a bad request fails alone.

Triton's dynamic batcher hands a model several clients' requests at once. Each request is
checked on its own; the valid ones run as one batch; the answers are split back per request and
checked (finite features). A request that fails gets, in its ``error`` output, ``"CODE: message"``
(``INVALID_ARG`` for the client's fault, ``INTERNAL`` otherwise) and no other output; the Triton
model shim (``triton_proxy_model``) turns that into the request's own error response (HTTP 400
/ 500). Messages are short and ours: tracebacks and paths stay in the server log.

Pure numpy (no PyTriton import), so it is tested without a server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ssft_deploy.errors import InputError

ERROR = "error"           # the output that carries a failed request's "CODE: message"
CLIENT, SERVER = "INVALID_ARG", "INTERNAL"
MAX_MESSAGE = 200
log = logging.getLogger("ssft_deploy.serving")

Inputs = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def error_outputs(rows: int, code: str, message: str) -> Outputs:
    """A failed request's outputs: ``error`` ``[rows, 1]`` bytes ``"CODE: message"``."""
    text = f"{code}: {message}".encode()
    return {ERROR: np.array([[text]] * max(rows, 1), dtype=object)}


def ok_outputs(outputs: Outputs, rows: int) -> Outputs:
    """A good request's outputs, with an empty ``error``."""
    return {**outputs, ERROR: np.array([[b""]] * rows, dtype=object)}


def client_message(exc: InputError) -> str:
    """The first line of an input error, bounded (request checks name no server paths)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= MAX_MESSAGE else first[:MAX_MESSAGE - 3] + "..."


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    return min((int(np.shape(v)[0]) for v in inputs.values() if np.ndim(v)), default=1)


def check_finite(name: str) -> Callable[[Inputs], None]:
    """A request check: ``inputs[name]`` holds only finite numbers."""
    def check(inputs: Inputs) -> None:
        if not np.isfinite(inputs[name]).all():
            raise InputError(f"{name} contain NaN or infinite values")
    return check


def finite_outputs(*names: str, allow_inf: bool = False) -> Callable[[Outputs], str | None]:
    """An answer check: outputs ``names`` hold no NaN (and no inf unless ``allow_inf``)."""
    def check(outputs: Outputs) -> str | None:
        for name in names:
            x = outputs[name]
            if np.isnan(x).any() or (not allow_inf and np.isinf(x).any()):
                return f"the model produced non-finite {name} for this input"
        return None
    return check


class RequestBatch:
    """``__call__(requests) -> responses`` for a PyTriton model bound without ``@batch``.

    ``check(inputs)`` raises ``InputError`` for a bad request; ``compute(inputs) -> outputs``
    runs the stacked valid requests (row-aligned outputs; an ``InputError`` there is the
    client's too); ``answer_check(outputs)`` returns a message when one request's answer is
    unusable. Any other exception is a server fault: logged, and the client gets ``INTERNAL``."""

    def __init__(self, model: str, compute: Callable[[Inputs], Outputs],
                 check: Callable[[Inputs], None] = lambda inputs: None,
                 answer_check: Callable[[Outputs], str | None] = lambda outputs: None):
        self.model, self.compute, self.check, self.answer_check = model, compute, check, answer_check

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[Outputs]:
        responses: list[Outputs | None] = [None] * len(requests)
        valid: list[tuple[int, Inputs]] = []
        for i, req in enumerate(requests):
            inputs = {k: np.asarray(v) for k, v in req.items()}
            failed = self._guard(lambda inputs=inputs: self.check(inputs), _rows(inputs))
            if failed is None:
                valid.append((i, inputs))
            else:
                responses[i] = failed
        if valid:
            for i, out in self._run(valid):
                responses[i] = out
        return responses  # type: ignore[return-value]

    def _run(self, valid: list[tuple[int, Inputs]]) -> list[tuple[int, Outputs]]:
        rows = [_rows(inputs) for _, inputs in valid]
        stacked = {k: np.concatenate([inp[k] for _, inp in valid]) for k in valid[0][1]}
        try:
            outputs = self.compute(stacked)
        except Exception:  # noqa: BLE001 - rerun each request alone, so only the culprit fails
            if len(valid) == 1:
                return [(valid[0][0], self._alone(valid[0][1], rows[0]))]
            log.warning("%s: a batch of %d requests failed; answering them one by one",
                        self.model, len(valid))
            return [(i, self._alone(inputs, n)) for (i, inputs), n in zip(valid, rows)]
        out, start = [], 0
        for (i, _), n in zip(valid, rows):
            out.append((i, self._answer({k: v[start:start + n] for k, v in outputs.items()}, n)))
            start += n
        return out

    def _alone(self, inputs: Inputs, rows: int) -> Outputs:
        result: dict[str, Outputs] = {}

        def run() -> None:
            result["out"] = self.compute(inputs)

        failed = self._guard(run, rows)
        return failed if failed is not None else self._answer(result["out"], rows)

    def _answer(self, outputs: Outputs, rows: int) -> Outputs:
        problem = self.answer_check(outputs)
        if problem:
            return error_outputs(rows, CLIENT, f"{self.model}: {problem}")
        return ok_outputs(outputs, rows)

    def _guard(self, fn: Callable[[], None], rows: int) -> Outputs | None:
        """Run ``fn``: None if it returned, else the request's error outputs."""
        try:
            fn()
            return None
        except InputError as exc:
            return error_outputs(rows, CLIENT, f"{self.model}: {client_message(exc)}")
        except Exception:  # a server fault: logged in full, the client told briefly
            log.exception("%s failed on a request", self.model)
            return error_outputs(rows, SERVER, f"{self.model}: internal error (see the server log)")
