"""Watches the sideload folder (watchdog) and hands each complete bundle to the reconciler's queue.
Write bundles as NAME.slmops.tar.part and rename to NAME.slmops.tar when complete (or copy them in whole:
files already present at start are picked up too)."""
from __future__ import annotations

import logging
import pathlib

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from edge_agent.bundle import SUFFIX

log = logging.getLogger("slmops.agent.sideload")


class _Handler(FileSystemEventHandler):
    def __init__(self, put):
        self.put = put

    def _maybe(self, path: str) -> None:
        if path.endswith(SUFFIX):
            self.put(pathlib.Path(path))

    def on_closed(self, event):          # a file written in place, once the writer closed it
        if not event.is_directory:
            self._maybe(event.src_path)

    def on_moved(self, event):           # a .part renamed into place
        if not event.is_directory:
            self._maybe(event.dest_path)


class SideloadWatcher:
    def __init__(self, folder: pathlib.Path, work_queue):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.queue = work_queue
        self.seen: set[tuple] = set()   # (path, mtime, size): the same name dropped again with new bytes counts
        self.observer = Observer()

    def _put(self, path: pathlib.Path) -> None:
        try:
            st = path.lstat()   # not followed: a symlink is handed on as one, and refused by bundle.unpack
        except OSError:
            return
        key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        if key in self.seen:
            return
        self.seen.add(key)
        log.info("sideload bundle found: %s", path.name)
        self.queue.put(("sideload", path))

    def start(self) -> None:
        self.observer.schedule(_Handler(self._put), str(self.folder), recursive=False)
        self.observer.start()
        for p in sorted(self.folder.glob(f"*{SUFFIX}")):
            self._put(p)

    def stop(self) -> None:
        self.observer.stop()
