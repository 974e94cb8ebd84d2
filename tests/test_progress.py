import logging

from dho.progress import Lines, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_progress_is_a_line_every_few_seconds(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="dho.progress")
    meter = Lines(total=100, desc="train dho", every=10.0, clock=clock)
    for _ in range(100):
        clock.now += 0.5  # 2 steps a second: a line every 20 steps
        meter.update()
        meter.set_postfix(loss="0.512")
    meter.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 + 1  # at 10 s, 20 s, ... 50 s, and the last
    assert lines[0] == "train dho: 20/100 (20%), 10s elapsed, ~40s left, loss=0.512"
    assert lines[-1] == "train dho: 100/100 (100%), 50s elapsed, loss=0.512"


def test_quick_work_and_disabled_meters_print_nothing(caplog, capsys):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="dho.progress")
    assert list(Lines(range(5), desc="quick", clock=clock)) == [0, 1, 2, 3, 4]  # done before any line was due
    assert list(progress(range(3), desc="off")) == [0, 1, 2]  # not enabled (the library's default)
    meter = Lines(total=10, desc="resumed", initial=4, clock=clock, enabled=False)
    clock.now = 60.0
    meter.update(6)
    meter.close()
    assert caplog.records == [] and capsys.readouterr().err == ""
