"""Progress for long loops: a rich bar on a terminal, plain periodic log lines elsewhere.

    with Progress("download", total=2500, unit="images") as bar:
        bar.advance(1, nbytes=57_000)      # thread-safe, cheap (no redraw per call)
        bar.add_total(10)                  # when the amount of work grows

On a TTY: `download ━━━━━━╸━━━ 1200/2500 images  68.1 MB  12.3 MB/s  0:00:08` (rich redraws it a few
times a second). Not a TTY (CI, a pipe, a log file): one line every `interval` seconds, and one at
the end, through the `bincli.progress` logger, so logs do not fill with redraws:
    download: 1200/2500 images (48%), 68.1 MB, 240 images/s, 12.3 MB/s, eta 5s
Quiet mode (-q) shows neither. Usable from any step (training epochs, uploads, predictions).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from bincli.console import err, is_quiet
from bincli.core.contract import parse_best_line, parse_epoch_line, parse_progress_line

log = logging.getLogger("bincli.progress")

_ERROR_LINE = re.compile(r"^ERROR [\w.]+: (error|hint): (.*)$")  # what core/train.py's main() logs
_INTERRUPTED_LINE = re.compile(r"interrupted by signal \d+ at epoch (\d+) \(after (\d+) samples\)")
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_seconds(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Counts units done (and bytes) against a total; shows them as a bar or as log lines."""

    def __init__(self, description: str, total: int | None = None, unit: str = "files",
                 interval: float = 10.0, show_bytes: bool = True, enabled: bool | None = None,
                 tty: bool | None = None, console: Any = None, transient: bool = False):
        self.description = description
        self.console = console or err
        self.transient = transient
        self.note = ""
        self.total = total
        self.unit = unit
        self.interval = interval
        self.show_bytes = show_bytes
        self.done = 0
        self.failed = 0
        self.nbytes = 0
        self._lock = threading.Lock()
        self._enabled = (not is_quiet()) if enabled is None else enabled
        self._tty = self.console.is_terminal if tty is None else tty
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._rich: Any = None
        self._task: Any = None
        self._ticker: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if not self._enabled:
            return self
        if self._tty:
            self._rich = _rich_progress(self.show_bytes, self.console, self.transient)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, nbytes=0, failed=0, unit=self.unit,
                                             note="")
        else:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._rich is not None:
            self._refresh()
            self._rich.stop()
        elif self._ticker is not None:
            self._ticker.join(timeout=1)
            if self.done or self.total:
                log.info(self.line(final=True))

    # ------------------------------------------------------------ counting
    def advance(self, n: int = 1, nbytes: int = 0, failed: int = 0) -> None:
        """n more units done (of which `failed` did not succeed), nbytes more bytes."""
        with self._lock:
            self.done += n
            self.failed += failed
            self.nbytes += nbytes
        if self._rich is not None:
            self._refresh()

    def set_done(self, done: int, note: str | None = None) -> None:
        """The count so far (for loops that report a position, not increments), and a short note
        shown after the figures (e.g. a running loss)."""
        with self._lock:
            self.done = done
            if note is not None:
                self.note = note
        if self._rich is not None:
            self._refresh()

    def renderable(self) -> Any:
        """The live bar as a rich renderable (None when not drawing one)."""
        return self._rich.get_renderable() if self._rich is not None else None

    def add_bytes(self, nbytes: int) -> None:
        self.advance(0, nbytes)

    def add_total(self, n: int) -> None:
        with self._lock:
            self.total = (self.total or 0) + n
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self.total = total
        if self._rich is not None:
            self._rich.update(self._task, total=total)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def line(self, final: bool = False) -> str:
        """The plain progress line (also what the log shows)."""
        elapsed = max(self.elapsed, 1e-9)
        done, total, nbytes = self.done, self.total, self.nbytes
        parts = [f"{done}/{total} {self.unit}" if total else f"{done} {self.unit}"]
        if total and not final:
            parts[0] += f" ({100 * done / total:.0f}%)"
        if self.failed:
            parts[0] += f", {self.failed} failed"
        if self.show_bytes:
            parts.append(human_bytes(nbytes))
        parts.append(f"{done / elapsed:.0f} {self.unit}/s")
        if self.show_bytes:
            parts.append(f"{human_bytes(nbytes / elapsed)}/s")
        if final:
            parts.append(f"in {human_seconds(elapsed)}")
        elif total and done:
            parts.append(f"eta {human_seconds((total - done) * elapsed / done)}")
        return f"{self.description}: " + ", ".join(parts)

    # ------------------------------------------------------------ internals
    def _refresh(self) -> None:
        self._rich.update(self._task, completed=self.done, nbytes=self.nbytes, failed=self.failed, note=self.note)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            log.info(self.line())


def _rich_progress(show_bytes: bool, console: Any, transient: bool) -> Any:
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress
    from rich.table import Column
    from rich.text import Text

    class StatsColumn(ProgressColumn):
        """`1200/2500 images  240/s  68.1 MB  12.3 MB/s  3 failed` in one column (fits 80 columns)."""

        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0
            done = int(task.completed)
            parts = [f"{done}/{int(task.total)}" if task.total else str(done), task.fields.get("unit", "")]
            parts.append(f"{done / elapsed:.0f}/s" if elapsed > 0 else "")
            if show_bytes:
                nbytes = task.fields.get("nbytes", 0)
                parts.append(human_bytes(nbytes))
                parts.append(f"{human_bytes(nbytes / elapsed)}/s" if elapsed > 0 else "")
            text = Text(" ".join(p for p in parts if p), style="progress.download")
            if task.fields.get("failed"):
                text.append(f"  {task.fields['failed']} failed", style="red")
            if task.fields.get("note"):
                text.append(f"  {task.fields['note']}")
            return text

    # The bar takes what the other columns leave of the terminal's width; the figures never wrap.
    return RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=None, table_column=Column(ratio=1)),
                        StatsColumn(table_column=Column(no_wrap=True)),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=transient,
                        refresh_per_second=4, expand=True)


PLAIN_INTERVAL_S = 15.0  # not a terminal: a training's progress line at most this often (CI logs)


def step_summary(prog: Mapping[str, float], epochs: int) -> str:
    """A `progress ...` line of the entry point, for people: where the epoch is, and how it goes."""
    step, steps = int(prog["step"]), int(prog["steps"])
    # Not "epoch ...": lines that start so are the epochs' summaries, which scripts pick out.
    return (f"step {step}/{steps} of epoch {int(prog['epoch'])}/{epochs} ({100 * step / max(steps, 1):.0f}%)  "
            f"loss {prog['loss']:.4f} acc {prog['acc']:.3f}  {prog['img_s']:.1f} img/s")


class TrainProgress:
    """Turns the child's lines into output for people: a rich progress bar per epoch (img/s, loss,
    accuracy) on a terminal; otherwise one plain line per epoch and, in between, the step at most
    every `interval` seconds, so a CI log never sits silent for a whole epoch. Other lines (logs)
    pass through."""

    def __init__(self, console, epochs: int, live: bool | None = None, interval: float = PLAIN_INTERVAL_S,
                 clock: Any = time.monotonic):
        self.console, self.epochs = console, epochs
        self.live = console.is_terminal if live is None else live
        self.interval, self.clock = interval, clock
        self._last_plain = clock()
        self.epoch_rows: list[dict[str, float]] = []
        self.errors: list[str] = []
        self.hints: list[str] = []
        self.tail: deque[str] = deque(maxlen=5)  # last log lines, for a crash without an error line
        self.interrupted: tuple[int, int] | None = None
        self._bar: Progress | None = None  # the running epoch's bar (live only)
        self._bar_epoch: int | None = None

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_bar()

    def bar(self):
        """The running epoch's bar as a renderable (None when not live)."""
        return self._bar.renderable() if self._bar is not None else None

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # transient: the epoch's summary line takes its place
            self._bar = None

    def _print(self, text: str, style: str | None = None) -> None:
        self.console.print(text, markup=False, highlight=False, style=style, soft_wrap=True)

    def line(self, raw: str) -> None:
        text = raw.rstrip("\n")
        if not text.strip():
            return
        prog = parse_progress_line(text)
        if prog is not None:
            if self.console.quiet:
                return
            if self.live:
                self._update_bar(prog)
            elif self.clock() - self._last_plain >= self.interval:
                self._last_plain = self.clock()
                self._print(step_summary(prog, self.epochs))
            return
        row = parse_epoch_line(text)
        if row is not None:
            self.epoch_rows.append(row)
            self._last_plain = self.clock()
            self._close_bar()
            self._print(self.epoch_summary(row, self.epochs))
            return
        if parse_best_line(text) is not None:  # the tuners' score: the epoch summary already shows it
            return
        text = _LOG_PREFIX.sub("", text)
        self.tail.append(text.strip())
        m = _ERROR_LINE.search(text)
        if m:
            (self.errors if m.group(1) == "error" else self.hints).append(m.group(2))
        m = _INTERRUPTED_LINE.search(text)
        if m:
            self.interrupted = (int(m.group(1)), int(m.group(2)))
        self._print(text, style="dim" if " INFO " in f" {text} " else None)

    def _update_bar(self, prog: dict[str, float]) -> None:
        epoch = int(prog["epoch"])
        if self._bar_epoch != epoch:
            self._close_bar()
            self._bar = Progress(f"epoch {epoch}/{self.epochs}", total=int(prog["steps"]), unit="steps",
                                 show_bytes=False, enabled=True, tty=True, console=self.console, transient=True)
            self._bar.__enter__()
            self._bar_epoch = epoch
        self._bar.set_total(int(prog["steps"]))
        self._bar.set_done(int(prog["step"]), note=f"{prog['img_s']:.1f} img/s  loss {prog['loss']:.4f}  "
                                                    f"acc {prog['acc']:.3f}")

    @staticmethod
    def epoch_summary(row: Mapping[str, float], epochs: int) -> str:
        parts = [f"epoch {int(row['epoch'])}/{epochs}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"]
        if "valid_loss" in row:
            parts.append(f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.3f} "
                         f"rmse {row.get('valid_rmse', float('nan')):.3f} mae {row.get('valid_mae', float('nan')):.3f}")
        parts.append(f"lr {row.get('lr', float('nan')):.2e}  {row.get('train_img_s', 0):.1f} img/s")
        return "  |  ".join(parts)
