"""``projectionist dashboard``: one-line errors for a bad APP or port."""

from __future__ import annotations

import socket

from tests.test_cli import ROOT, run_cli


def one_line_error(*args: str) -> str:
    done = run_cli("dashboard", *args, cwd=ROOT)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_an_unknown_or_malformed_app_is_one_line() -> None:
    assert "cannot import application module 'no_such_module'" in one_line_error(
        "--app", "no_such_module:app"
    )
    assert "must look like 'module:attribute'" in one_line_error("--app", "examples.shop.app")
    # APP as an argument, as the command first took it, still works.
    assert "is NoneType, not a projectionist.Application" in one_line_error(
        "examples.shop.app:nothing"
    )
    assert "two applications given" in one_line_error(
        "examples.shop.app:app", "--app", "examples.shop.app:other"
    )


def test_a_missing_app_is_one_line() -> None:
    done = run_cli("dashboard", cwd=ROOT, env={"PROJECTIONIST_APP": ""})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: no application: give --app module:attribute")


def test_a_busy_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = one_line_error(
            "--app", "examples.shop.app:app", "--url", "memory://", "--port", str(port)
        )
    assert f"cannot listen on 127.0.0.1:{port}" in message
