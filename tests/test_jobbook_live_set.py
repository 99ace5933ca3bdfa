"""JobBook.power_at walks only the jobs that may still be active (a cached live set); it must answer exactly
as a walk over the whole book does, through announcements, done messages, defers, resumes, pruning and a
clock that steps back."""
import random

from controller.compute.jobs import ANNOUNCED, JobBook
from drivers.compute import MAX_JOBS


def _brute(book: JobBook, t_s: float) -> dict:
    fresh = {j: kw for j, (kw, ts) in book.measured.items() if 0.0 <= t_s - ts <= book.max_age_s}
    out = {j.id: j.kw for j in book.jobs.values() if j.id not in fresh and book.active(j, t_s)}
    out.update({j: kw for j, kw in fresh.items() if kw > 0.0})
    return out


def test_power_at_equals_a_walk_over_the_whole_book():
    rng = random.Random(7)
    book = JobBook()
    t = 0.0
    n = 0
    for step in range(3000):
        t += rng.uniform(0.0, 600.0) if step % 500 else -900.0          # now and then the clock steps back
        r = rng.random()
        if r < 0.15:
            n += 1
            book.announce({"id": f"j{n}", "kw": rng.uniform(5, 40), "start_s": t + rng.uniform(-600, 7200),
                           "end_s": t + rng.uniform(7200, 30000), "deferrable": rng.random() < 0.3})
        elif r < 0.2 and book.jobs:
            j = rng.choice(list(book.jobs.values()))
            book.announce({"id": j.id, "kw": j.kw, "start_s": j.start_s, "end_s": t, "state": "done"})
        elif r < 0.25 and book.jobs:
            j = rng.choice(list(book.jobs.values()))
            if j.id not in book.deferred and j.state not in ("done", "cancelled"):
                book.mark_deferred(j.id, t)
        elif r < 0.3 and book.deferred:
            book.mark_resumed(rng.choice(list(book.deferred)), t)
        got = book.power_at(t)
        assert dict(got) == _brute(book, t), step
        assert all(got.basis[k] == ANNOUNCED for k in got)
    assert n > MAX_JOBS            # the book was pruned along the way
