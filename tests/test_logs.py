"""What an app prints becomes its task's log lines, as a terminal would show them, bounded."""

from __future__ import annotations

from inferencesh_ray.logs import MAX_LINE_CHARS, LineSink


def sink() -> tuple[LineSink, list[str]]:
    lines: list[str] = []
    return LineSink(lines.append), lines


def test_a_progress_bar_redrawn_with_carriage_returns_is_the_one_line_it_ends_as():
    """tqdm redraws with `\\r` and no newline: its redraws piled up in one ever-growing line."""
    bar, lines = sink()
    for percent in range(0, 101):
        bar.write(f"\r{percent:3d}%|{'#' * (percent // 10):10}|")
    assert lines == [] and len(bar._partials["stdout"]) < 40  # nothing shown yet, nothing piling up
    bar.write("\n")
    bar.write("done\r\n")  # a CRLF ends a line; it does not start it over
    assert lines == ["100%|##########|", "done"]


def test_a_bar_left_unfinished_is_shown_as_it_stood_when_the_task_ends():
    bar, lines = sink()
    bar.write("\r 40%|####      |\r")
    bar.flush()
    assert lines == [" 40%|####      |"]


def test_over_long_lines_go_in_pieces_and_one_that_never_ends_holds_no_unbounded_memory():
    out, lines = sink()
    out.write("x" * (MAX_LINE_CHARS * 2 + 5) + "\n")
    assert [len(line) for line in lines] == [MAX_LINE_CHARS, MAX_LINE_CHARS, 5]
    lines.clear()
    for _ in range(100):
        out.write("y" * 1000)  # print(..., end="") in a loop
    assert all(len(line) == MAX_LINE_CHARS for line in lines) and len(out._partials["stdout"]) <= MAX_LINE_CHARS
    out.flush()
    assert "".join(lines) == "y" * 100_000


def test_plain_lines_and_empty_ones_are_kept_as_they_are():
    out, lines = sink()
    out.write("one\n\ntwo\nthr")
    out.write("ee\n")
    assert lines == ["one", "", "two", "three"]


def test_a_bar_on_stderr_does_not_wipe_a_line_waiting_on_stdout():
    """stdout and stderr shared one unfinished line: tqdm's `\r` redraws wiped `print("saving", end="")`."""
    import logging
    import sys

    from inferencesh_ray import logs

    out, lines = sink()
    out.write("saving ", "stdout")
    out.write("\r 50%|#####", "stderr")
    out.write("\r100%|##########|\n", "stderr")
    out.write("done\n", "stdout")
    assert lines == ["100%|##########|", "saving done"]

    seen: list[str] = []
    with logs.capture(seen.append):  # the real streams and logging, as an app's code uses them
        print("saving ", end="")
        sys.stderr.write("\r 10%|#")
        logging.getLogger("app").warning("a record is a line of its own")
        print("done")
    assert seen == ["WARNING app: a record is a line of its own", "saving done", " 10%|#"]


def test_print_reaches_the_task_when_a_server_has_pointed_print_elsewhere(monkeypatch):
    """Serve's throughput mode makes `print` on a replica log to its own logger, which no task sees."""
    import io
    import sys

    from inferencesh_ray import logs

    logs.install()
    elsewhere: list[str] = []
    # As on a replica: what `print` was when the capture wrapped it logs to Serve's logger.
    monkeypatch.setattr(logs, "_print_before", lambda *objects, **options: elsewhere.append(" ".join(map(str, objects))))
    seen: list[str] = []
    with logs.capture(seen.append):
        print("loading", 3, sep=": ")
        print("to stderr", file=sys.stderr)
    print("between tasks")
    own = io.StringIO()
    print("a", "line", file=own, flush=True)  # Serve's replacement wrote "('a', 'line')" to such a file
    assert seen == ["loading: 3", "to stderr"]
    assert elsewhere == ["between tasks"]  # outside a task, print to the streams is left as the server made it
    assert own.getvalue() == "a line\n"


def test_an_app_that_wraps_print_itself_makes_no_loop(monkeypatch):
    """The next task's capture took the app's wrapper of our print for the one to fall back on:
    print outside a task then called itself until RecursionError."""
    import builtins
    import functools

    from inferencesh_ray import logs

    logs.install()
    monkeypatch.setattr(builtins, "print", builtins.print)  # put back what the app changes below
    monkeypatch.setattr(logs, "_print_before", logs._print_before)
    seen: list[str] = []
    with logs.capture(seen.append):
        builtins.print = functools.partial(builtins.print, flush=True)  # in an app's setup
        print("set up")
    with logs.capture(seen.append):
        print("a task")
    print("between tasks")  # on the real stdout, no RecursionError
    assert seen == ["set up", "a task"]


def test_print_set_again_by_the_server_is_wrapped_again(monkeypatch):
    """Serve sets its print again when a replica's logging config changes: tasks' prints went there."""
    import builtins

    from inferencesh_ray import logs

    logs.install()
    monkeypatch.setattr(logs, "_print_before", logs._print_before)  # put back after the test
    to_serve: list[str] = []
    monkeypatch.setattr(builtins, "print", lambda *objects, **options: to_serve.append(" ".join(map(str, objects))))
    seen: list[str] = []
    with logs.capture(seen.append):
        print("in a task")
    print("between tasks")
    assert seen == ["in a task"] and to_serve == ["between tasks"]
