"""`bigthoughts serve`: user mistakes are one-line errors, caught before the model loads."""

import socket

import pytest

from bigthoughts.cli import main


def test_port_in_use_is_a_one_line_error(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 127.0.0.1:") and "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("flag", [["--queue-size", "0"], ["--max-batch-rows", "0"],
                                  ["--batch-wait-ms", "-1"], ["--api-key", " "]])
def test_bad_batching_flags_are_one_line_errors(flag, capsys):
    assert main(["serve", "--host", "127.0.0.1", "--port", "0", *flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "must be" in err and err.count("\n") == 1
