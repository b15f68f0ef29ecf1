"""The command's view of a sync's progress: bars on a terminal, plain lines elsewhere.

``CommandProgress`` is the ``log`` that ``hcore_remotesyncdb`` gives the sync. Its
messages go to the command's stdout by verbosity, as always. The counts of the long
steps (``dbsync.engine.progress``: the fetch in dumps and bytes, the objects, the
records in series and records, the files) become tqdm bars when stdout is a terminal;
otherwise (cron, a pipe, a file) no bar control characters are written, and with
``-v 2`` a plain line says how far a step has gone, at its end and at most every
``PLAIN_EVERY`` seconds on the way. ``--silent`` (verbosity 0) shows neither.
"""

import shutil
import time

from tqdm import tqdm

from dbsync.engine.progress import UNITS, Progress
from dbsync.runs.progress import PHASES, describe, size_text

PLAIN_EVERY = 30  # seconds between two plain lines of one step (cron mail, log files)
PLAIN_LEVEL = 2


class RawStream:
    """A command's OutputWrapper as a plain stream (it would end each write with a
    newline, and a bar redraws its line with carriage returns)."""

    def __init__(self, out):
        self.out = out

    def write(self, text):
        self.out.write(text, ending="")

    def flush(self):
        self.out.flush()

    def __getattr__(self, name):
        return getattr(self.out, name)


class CommandProgress(Progress):
    def __init__(self, stdout, verbosity, bars=None):
        """``bars``: draw bars (default: when ``stdout`` is a terminal and the
        verbosity is 1 or more)."""
        self.stdout = stdout
        self.verbosity = verbosity
        if bars is None:
            bars = verbosity >= 1 and stdout.isatty()
        self.bars = bars
        self.bar = None
        self.step = None
        self.done, self.total, self.amounts = 0, None, {}
        self.shown = 0.0

    def __call__(self, message, level=1):
        if self.verbosity < level:
            return
        if self.bar is not None:
            self.bar.write(message, file=RawStream(self.stdout))
        else:
            self.stdout.write(message)

    def begin(self, step, total):
        self.end(self.step)
        self.step, self.done, self.total, self.amounts = step, 0, total, {}
        self.shown = time.monotonic()
        if self.bars:
            self.bar = tqdm(
                total=total,
                desc=PHASES.get(step, step),
                unit=f" {UNITS.get(step, '')}",
                file=RawStream(self.stdout),
                # a terminal that reports no size (0 columns) would get empty bars
                ncols=shutil.get_terminal_size((100, 24)).columns or 100,
                mininterval=0.2,
            )

    def advance(self, step, n=1, **amounts):
        if step != self.step:
            return
        self.done += n
        for name, value in amounts.items():
            self.amounts[name] = self.amounts.get(name, 0) + value
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(n)
        elif time.monotonic() - self.shown >= PLAIN_EVERY:
            self.plain_line()

    def end(self, step):
        if step is None or step != self.step:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        else:
            self.plain_line()
        self.step = None

    def postfix(self):
        return ", ".join(
            size_text(value) if name == "bytes" else f"{value:,} {name}"
            for name, value in self.amounts.items()
        )

    def plain_line(self):
        self.shown = time.monotonic()
        self(describe(self.step, self.done, self.total, self.amounts), PLAIN_LEVEL)
