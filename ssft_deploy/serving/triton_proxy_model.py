"""Sent to Triton as each model's ``model.py`` (never imported by this package).

PyTriton 0.7's proxy model fails every request of a batch when one fails, with a traceback. This
shim loads PyTriton's proxy (shipped beside it as ``pytriton_model.py``) and wraps its response
builder: a response whose ``error`` output holds ``"CODE: message"`` (see
``ssft_deploy.serving.requests``) becomes that request's own Triton error (``INVALID_ARG`` ->
HTTP 400), while the batch's other requests keep their answers.
"""

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from . import pytriton_model as _proxy  # type: ignore[attr-defined]
from .pytriton_model import TritonPythonModel  # noqa: F401  # the class Triton instantiates

_wrap_response = _proxy._wrap_response


def _error_code(name):
    return getattr(pb_utils.TritonError, name, pb_utils.TritonError.INTERNAL)


def _wrap_with_errors(response, requested_output_names, model_outputs_dict):
    error = (response.data or {}).get("error")
    if error is not None and error.size:
        text = error.reshape(-1)[0]
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if text:
            code, _, message = text.partition(": ")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, _error_code(code)))
    return _wrap_response(response, requested_output_names, model_outputs_dict)


_proxy._wrap_response = _wrap_with_errors
