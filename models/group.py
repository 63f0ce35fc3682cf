"""A grouped generation (`count: 4`): several pictures from one request, one after the other, as one job.

It behaves as one Generation to the worker (step, done, preview, result), so the group is queued, capped,
journaled and cancelled as one job; picture i uses seed + i, so a resumed group makes the same pictures.
Each picture's generation is made when the previous one ends: only one holds device memory at a time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from PIL import Image

from iris.grid import make_grid, picture_seed
from iris.request import ImagineRequest
from models.generate import Generation, ImagineResult, StepInfo, run_steps


class GroupGeneration:
    def __init__(self, make: Callable[[ImagineRequest], Generation], request: ImagineRequest) -> None:
        self.request = request
        self.count = request.count
        self.seed = request.seed if request.seed is not None else random.randrange(2**32)
        self.total = request.steps * self.count  # steps of the whole group
        self.steps_done = 0
        self.results: list[ImagineResult] = []
        self.before_step: Callable[[Generation], None] | None = None  # passed on to each picture's
        self._make = make
        self._current = self._next()

    def _next(self) -> Generation:
        seed = picture_seed(self.seed, len(self.results) + 1)
        return self._make(dataclasses.replace(self.request, seed=seed, count=1))

    @property
    def size(self) -> tuple[int, int]:
        return self._current.size

    @property
    def done(self) -> bool:
        return len(self.results) >= self.count

    def step(
        self,
        wants_slice: Callable[[], bool] | None = None,
        *,
        between: Callable[[], None] | None = None,
        slice_size: int | None = None,
        read_loss: bool = True,
    ) -> float:
        """One step of the picture in progress (the same contract as `Generation.step`)."""
        cur = self._current
        cur.before_step = self.before_step
        loss = cur.step(wants_slice, between=between, slice_size=slice_size, read_loss=read_loss)
        self.steps_done += 1
        if cur.done:
            self.results.append(cur.result())
            if not self.done:
                self._current = self._next()
        return loss

    def preview(self) -> Image.Image:
        """The grid so far: finished pictures, the one in progress, then blanks."""
        shown = [r.image for r in self.results]
        if not self.done:
            shown.append(self._current.preview())
        blank = Image.new("RGB", shown[0].size, (32, 32, 32))
        return make_grid(shown + [blank] * (self.count - len(shown)))

    def run(
        self,
        on_step: Callable[[StepInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        loss_every: int = 1,
    ) -> ImagineResult:
        """Step until done or until `should_stop()` is true (checked between steps); the loss is read
        every `loss_every` steps and on the last one (other steps report NaN)."""
        return run_steps(self, on_step, should_stop, loss_every)

    def result(self, stopped: bool = False) -> ImagineResult:
        """The grid of every picture (stopped early: those made, and the one in progress as it stands);
        the scores are the pictures' mean."""
        rs = self.results if self.done else [*self.results, self._current.result(stopped=True)]
        return ImagineResult(
            make_grid([r.image for r in rs]),
            self.seed,
            self.steps_done,
            sum(r.clip_score for r in rs) / len(rs),
            sum(r.start_score for r in rs) / len(rs),
            stopped,
        )


AnyGeneration = Generation | GroupGeneration  # what the worker steps
