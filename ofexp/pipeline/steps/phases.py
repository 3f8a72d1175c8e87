"""A progress line for a command whose work has a few long phases (a fusion: align, test,
curves, log the model; an evaluation: one phase per measure): which phase it is in, shown on
stderr once the work passes 2 s."""
from __future__ import annotations

import sys
import threading

from tqdm import tqdm

# Work done sooner shows nothing: a study runs many short steps, each with its own line already.
SHOW_AFTER_S = 2.0


class Phases:
    """`with Phases("fuse geometric", ["aligning", "testing"]) as phases: phases.enter("aligning") …`

    The line appears SHOW_AFTER_S after the start even inside one long phase (a timer shows it:
    tqdm's own `delay` waits for the next update, which a 50 s alignment never makes)."""

    def __init__(self, what: str, names: list[str], enabled: bool = True) -> None:
        self.names = names
        self.shown = False
        self.bar = tqdm(total=len(names), desc=what, file=sys.stderr, delay=SHOW_AFTER_S, disable=not enabled,
                        leave=True, bar_format="{desc}: {n_fmt}/{total_fmt}{postfix} [{elapsed}]")
        self._timer = threading.Timer(SHOW_AFTER_S, self._show)
        self._timer.daemon = True
        if enabled:
            self._timer.start()

    def _show(self) -> None:
        self.shown = True
        self.bar.refresh()
        # refresh() does not record a display, and close() ends only a bar it knows was displayed
        self.bar.last_print_t = self.bar._time()

    def enter(self, name: str) -> None:
        """Phase `name` starts: the ones before it are done."""
        self.bar.n = self.names.index(name)
        self.bar.set_postfix_str(name, refresh=self.shown)

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *exc) -> None:
        # a line that was shown stays, ended by a newline, so what follows starts a line of its own
        # (cleared in place, it ran into the result line wherever stderr is not a terminal);
        # one never shown (work under SHOW_AFTER_S) prints nothing
        self._timer.cancel()
        if self.shown and exc[0] is None:
            self.bar.n = self.bar.total
            self.bar.set_postfix_str("done", refresh=False)
        self.bar.close()


__all__ = ["Phases", "SHOW_AFTER_S"]
