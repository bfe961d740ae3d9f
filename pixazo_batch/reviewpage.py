"""``report.html``: the morning review page, one card per job with the video itself.

One self-contained static file written into the output folder beside the videos: inline CSS and
a few lines of script for the state filters, no network fetch, no framework. Videos are linked
by their relative paths, so the folder can be copied or served as it is. Every text from the
manifest or the gateway is escaped.

A page holds at most ``PAGE_CARDS`` cards (``docs/design.md``, "Output"): every job that is not
downloaded comes first, then the downloaded ones latest in the manifest; ``results.jsonl`` and
``report`` name every job.
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from pixazo_batch.jobrow import JobRow
from pixazo_batch.models import JobState
from pixazo_batch.safefs import replaced_text
from pixazo_batch.statereader import StateReader

PAGE_NAME = "report.html"
#: the most cards a page holds: a browser cannot lay out 100,000 videos (nor read the start of
#: each), and the page of a million jobs would be 800 MB
PAGE_CARDS = 2_000

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem;margin:0 0 .5rem}
.totals{margin:.25rem 0 1rem;color:#444}
.shown{margin:-.5rem 0 1rem;color:#444}
.filters label{margin-right:1rem;cursor:pointer}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.75rem}
.card video{width:100%;max-height:240px;background:#000;border-radius:4px}
.card .none{height:120px;display:flex;align-items:center;justify-content:center;
 background:#eee;border-radius:4px;color:#777}
.card h2{font-size:1rem;margin:.5rem 0 .25rem;word-break:break-all}
.card .prompt{margin:.25rem 0;color:#333}
.card dl{display:grid;grid-template-columns:auto 1fr;gap:0 .75rem;margin:.25rem 0;font-size:13px}
.card dt{color:#666}.card dd{margin:0;word-break:break-all}
.state{display:inline-block;padding:0 .4rem;border-radius:4px;font-size:12px;background:#eee}
.state.downloaded{background:#d8f5d8}.state.failed,.state.uncertain{background:#fbd9d9}
.warn{color:#a40000}
"""

_SCRIPT = """
document.querySelectorAll('.filters input').forEach(function (box) {
  box.addEventListener('change', function () {
    var shown = {};
    document.querySelectorAll('.filters input:checked').forEach(function (b) {
      shown[b.value] = true;
    });
    document.querySelectorAll('.card').forEach(function (card) {
      card.hidden = !shown[card.dataset.state];
    });
  });
});
"""


class PageCards:
    """The jobs a review page shows, chosen as the state's jobs go by in their order (one pass,
    at most ``limit`` jobs held): those not downloaded first, then the latest downloaded.

    Usage: ``cards.add(row, cents)`` for every job, then ``cards.page(store)``.
    """

    def __init__(self, limit: int = PAGE_CARDS) -> None:
        self.limit = limit
        #: jobs seen
        self.jobs = 0
        self._unfinished: list[tuple[JobRow, int]] = []
        self._downloaded: deque[tuple[JobRow, int]] = deque(maxlen=limit)

    def add(self, row: JobRow, cents: int) -> None:
        """See one job (in the state's order)."""
        self.jobs += 1
        if row.state is JobState.DOWNLOADED:
            self._downloaded.append((row, cents))
        elif len(self._unfinished) < self.limit:
            self._unfinished.append((row, cents))

    def page(self, store: StateReader) -> Iterator[str]:
        """The whole page, in pieces."""
        room = self.limit - len(self._unfinished)
        latest = list(self._downloaded)[max(0, len(self._downloaded) - room) :]
        chosen = [*self._unfinished, *latest]
        yield page_head(store, shown=len(chosen), jobs=self.jobs)
        yield "\n".join(card(row, cents) for row, cents in chosen)
        yield PAGE_TAIL


def render_page(store: StateReader, limit: int = PAGE_CARDS) -> Iterator[str]:
    """The review page for the jobs the state file holds (at most ``limit`` cards), in pieces."""
    cards = PageCards(limit)
    for row, _, cents in store.iter_ledger():
        cards.add(row, cents)
    yield from cards.page(store)


def write_page(store: StateReader, folder: Path, limit: int = PAGE_CARDS) -> None:
    """Write ``report.html`` into ``folder`` atomically (never through a link)."""
    with replaced_text(folder / PAGE_NAME, store.worker) as sink:
        sink.writelines(render_page(store, limit))


def page_head(store: StateReader, *, shown: int, jobs: int) -> str:
    """The review page up to its first card: the totals, the money, which jobs it shows and
    the state filters."""
    counts = store.counts()
    total = sum(counts.values())
    totals = ", ".join(f"{n} {state.value}" for state, n in sorted(counts.items()) if n)
    filters = " ".join(
        f'<label><input type="checkbox" value="{state.value}" checked> {state.value} '
        f"({counts[state]})</label>"
        for state in JobState
        if counts.get(state)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>pixazo-batch review</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>pixazo-batch review</h1>"
        f'<p class="totals">{total} jobs: {html.escape(totals or "none")}. '
        f"${store.committed_cents() / 100:.2f} committed, "
        f"${store.spent_cents() / 100:.2f} spent.</p>"
        f"{_shown(shown, jobs)}"
        f'<p class="filters">{filters}</p>'
        '<main class="cards">'
    )


def _shown(shown: int, jobs: int) -> str:
    """The line saying the page shows only some of the jobs (nothing when it shows them all)."""
    if shown >= jobs:
        return ""
    return (
        f'<p class="shown">This page shows {shown} of the {jobs} jobs: every job that is not '
        "downloaded, then the latest downloaded. <code>results.jsonl</code> and "
        "<code>pixazo-batch report</code> list them all.</p>"
    )


#: the review page after its last card
PAGE_TAIL = f"</main><script>{_SCRIPT}</script></body></html>\n"


def card(row: JobRow, cents: int) -> str:
    """One job's card: its video (or its state), its prompt and facts, every text escaped."""
    request = row.request
    if row.state is JobState.DOWNLOADED:
        media = (
            f'<video controls preload="metadata" src="{html.escape(quote(row.output))}"></video>'
        )
    else:
        media = f'<div class="none">{html.escape(row.state.value)}</div>'
    facts: list[tuple[str, str]] = [
        ("state", f'<span class="state {row.state.value}">{row.state.value}</span>'),
        ("resolution", request.resolution.value),
        ("duration", request.duration.value),
        ("aspect", request.aspect_ratio.value),
        ("price", f"${cents / 100:.2f}"),
        ("output", html.escape(row.output)),
    ]
    if row.request_id:
        facts.append(("request", html.escape(row.request_id)))
    if row.video_seconds is not None:
        video = f"{row.video_seconds:.1f} s, {row.video_width}x{row.video_height}"
        facts.append(("video", html.escape(video)))
    if row.error:
        facts.append(("error", f'<span class="warn">{html.escape(row.error)}</span>'))
    if row.mismatch:
        facts.append(("mismatch", f'<span class="warn">{html.escape(row.mismatch)}</span>'))
    details = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return (
        f'<article class="card" data-state="{row.state.value}" data-id="{html.escape(row.id)}">'
        f"{media}<h2>{html.escape(row.id)}</h2>"
        f'<p class="prompt">{html.escape(request.prompt)}</p><dl>{details}</dl></article>'
    )
