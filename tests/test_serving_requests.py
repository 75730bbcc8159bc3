"""Per-request answers inside one Triton batch (no server needed), host and token checks."""

from __future__ import annotations

import os
import socket
import stat

import numpy as np
import pytest

from ssft_deploy.errors import InputError, ServingError
from ssft_deploy.serving.requests import (
    ERROR,
    RequestBatch,
    check_finite,
    finite_outputs,
)
from ssft_deploy.serving.security import (
    check_host,
    check_ports_free,
    is_loopback,
    read_token_file,
    write_token_file,
)


def double(inputs):
    x = inputs["x"]
    if (x == 13).any():
        raise InputError("13 is unlucky")
    if (x == 99).any():
        raise RuntimeError("/srv/secret/path.py exploded")
    return {"y": x * 2.0}


def req(*values) -> dict[str, np.ndarray]:
    return {"x": np.array([[v] for v in values], np.float32)}


def error_of(out) -> str:
    return out[ERROR].reshape(-1)[0].decode()


def test_bad_request_fails_alone_and_the_rest_are_computed_once():
    calls = []

    def compute(inputs):
        calls.append(len(inputs["x"]))
        return double(inputs)

    run = RequestBatch("m", compute, check_finite("x"), finite_outputs("y"))
    out = run([req(1, 2), req(np.nan), req(3), req(np.inf, 4)])
    assert calls == [3]                                     # the valid ones: one engine call
    assert out[0]["y"].tolist() == [[2], [4]] and out[2]["y"].tolist() == [[6]]
    assert error_of(out[0]) == "" and out[0][ERROR].shape == (2, 1)
    for i in (1, 3):
        assert set(out[i]) == {ERROR}
        assert error_of(out[i]) == "INVALID_ARG: m: x contain NaN or infinite values"
    assert out[3][ERROR].shape == (2, 1)


def test_a_batch_failure_is_isolated_by_rerunning_requests_alone():
    run = RequestBatch("m", double)
    out = run([req(1), req(13), req(2), req(99)])
    assert out[0]["y"].tolist() == [[2]] and out[2]["y"].tolist() == [[4]]
    assert error_of(out[1]) == "INVALID_ARG: m: 13 is unlucky"
    msg = error_of(out[3])                  # a server fault: logged, no detail to the client
    assert msg == "INTERNAL: m: internal error (see the server log)" and "/srv" not in msg


def test_non_finite_answer_fails_its_request_only():
    run = RequestBatch("m", lambda inp: {"y": np.where(inp["x"] < 1, np.nan, inp["x"])},
                       answer_check=finite_outputs("y"))
    out = run([req(0.5), req(3)])
    assert error_of(out[0]) == "INVALID_ARG: m: the model produced non-finite y for this input"
    assert np.isfinite(out[1]["y"]).all()
    inf_ok = finite_outputs("y", allow_inf=True)
    assert inf_ok({"y": np.array([np.inf])}) is None and inf_ok({"y": np.array([np.nan])})


def test_long_messages_are_cut():
    def compute(_):
        raise InputError("x" * 1000 + "\nsecond line")

    msg = error_of(RequestBatch("m", compute)([req(1)])[0])
    assert len(msg) < 250 and "second line" not in msg


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                     ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                     ("10.1.2.3", False), ("example.org", False)])
def test_only_loopback_without_allow_remote(host, ok):
    assert is_loopback(host) is ok
    if ok:
        check_host(host, allow_remote=False)
    else:
        with pytest.raises(ServingError, match="--allow-remote"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)         # allowed on purpose (with a warning)


def test_port_in_use_names_the_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServingError, match=f"grpc port {port} on 127.0.0.1 is already in use"):
            check_ports_free("127.0.0.1", {"grpc": port})
    check_ports_free("127.0.0.1", {"grpc": port})   # free again


def test_token_file_is_private(tmp_path):
    path = write_token_file(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = read_token_file(path)
    assert len(token) >= 32
    with pytest.raises(FileExistsError):
        write_token_file(tmp_path)                  # never reuses or overwrites a file
    os.chmod(path, 0o644)
    with pytest.raises(ServingError, match="chmod 600"):
        read_token_file(path)
