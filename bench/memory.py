"""Peak memory of this process, for the bench scripts: anonymous memory (RssAnon in /proc, so the page cache of
memory-mapped data does not count) sampled every 5 ms, and the device's own peak on CUDA."""

from __future__ import annotations

import threading
import time
from pathlib import Path


def rss_anon_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon"))) / 1024


class PeakRss:
    """`with PeakRss() as peak: ...` then peak.start_mib, peak.peak_mib."""

    def __enter__(self) -> PeakRss:
        self.start_mib = self.peak_mib = rss_anon_mib()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak_mib = max(self.peak_mib, rss_anon_mib())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, rss_anon_mib())
