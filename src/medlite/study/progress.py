"""Study progress: one line per running trial (its latest log line) plus the overall count.

A terminal gets a live rich display; logs and CI get plain lines (a trial starting, a trial ending).
A trial counts as running once its `logs/trial.log` exists and it has no outcome yet, which works
the same for local workers and Ray tasks on other nodes (the study directory is shared).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 2048))
            lines = [l for l in handle.read().decode(errors="replace").splitlines() if l.strip()]
            return lines[-1][:120] if lines else ""
    except OSError:
        return ""


class StudyProgress:
    def __init__(self, trials, jobs: list[dict], total: int, done_before: int, say: Callable[[str], None], console=None):
        self.trials, self.jobs, self.total, self.done_before = trials, jobs, total, done_before
        self.say = say
        self.console = console
        self.live = None
        self.started: dict[int, float] = {}
        self.reported: set[int] = set()
        self.logs = [Path(job["dir"]) / "trial.log" for job in jobs]
        self.sizes = [p.stat().st_size if p.exists() else -1 for p in self.logs]  # logs of an earlier, killed attempt

    def __enter__(self) -> "StudyProgress":
        if self.console is not None and self.console.is_terminal and self.jobs:
            from rich.live import Live

            self.live = Live(self._render({}), console=self.console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _running(self, outcomes: dict) -> list[int]:
        out = []
        for i, log in enumerate(self.logs):
            if i in outcomes:
                continue
            size = log.stat().st_size if log.exists() else -1
            if size > self.sizes[i]:
                out.append(i)
                self.started.setdefault(i, time.perf_counter())
        return out

    def _render(self, outcomes: dict):
        from rich.markup import escape
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        finished = self.done_before + len(outcomes)
        failed = sum(1 for o in outcomes.values() if o["status"] == "failed")
        table.add_row(f"[bold]study[/bold] {finished}/{self.total} trials done" + (f", [red]{failed} failed[/red]" if failed else ""))
        for i in self._running(outcomes):
            seconds = time.perf_counter() - self.started[i]
            table.add_row(f"  [cyan]{escape(self.trials[i].name)}[/cyan] {seconds:5.0f}s  {escape(_last_line(self.logs[i]))}")
        return table

    def poll(self, outcomes: dict) -> None:
        from rich.markup import escape

        if self.live is not None:
            self.live.update(self._render(outcomes))
        else:
            for i in self._running(outcomes):
                if i not in self.reported and i not in outcomes:
                    self.reported.add(i)
                    self.say(f"study: started {self.trials[i].name}")
        finished = self.done_before + len(outcomes)
        for i, outcome in sorted(outcomes.items()):
            if ("end", i) in self.reported:
                continue
            self.reported.add(("end", i))
            status = outcome["status"] + (f": {outcome.get('error')}" if outcome["status"] == "failed" else "")
            line = f"study: [{finished}/{self.total}] {self.trials[i].name}: {status} ({outcome.get('seconds', 0):.0f}s)"
            if self.live is not None:
                self.live.console.print(escape(line))
            else:
                self.say(line)
