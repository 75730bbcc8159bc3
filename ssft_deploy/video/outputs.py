"""What a video run writes into its output folder.

``events.jsonl``  one JSON event per ended query-modality track, flushed as it is written
``tracks.json``   every tracklet (span, samples and their fate), camera and crop counters
``NAME.mot.txt``  per camera, the tracker's boxes (MOTChallenge ``frame,id,x,y,w,h,score,-1,-1,-1``)
``NAME.avi``      per camera, the annotated video (boxes, track ids, identities; MJPG)
``rankings/``     one ranking picture per event (:mod:`ssft_deploy.visrank`),
                  ``CAMERA_TRACK_STARTFRAME.jpg`` (``_2``, ... if a name comes again)

Nothing is written outside the folder. A folder that is not empty is refused
(:class:`OutputExistsError`) unless ``overwrite``, and even then only a previous run's folder (it
has ``events.jsonl``): that run's outputs above are deleted first (``NAME.avi`` only beside a
``NAME.mot.txt``), so no old picture is left matching no event; other files are left alone.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.visrank import Tile, ranking_picture, save_picture

_COLOURS = {"rgb": (60, 200, 255), "ir": (255, 160, 60)}


class OutputExistsError(InputError):
    """The output folder holds files (a previous run?) and overwriting was not asked for."""


def check_out(out: str | Path, overwrite: bool = False) -> None:
    """OutputExistsError unless ``out`` is missing, empty, or (with ``overwrite``) a previous
    run's folder; nothing is changed (callers check this before any work)."""
    out = Path(out)
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not held:
        return
    shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
    if not overwrite:
        raise OutputExistsError(f"output folder {out} is not empty ({shown}; a previous run?): "
                                "pass --overwrite (overwrite=True) to replace that run's "
                                "outputs, or choose a new folder")
    if not (out / "events.jsonl").is_file():
        raise OutputExistsError(f"output folder {out} is not empty ({shown}) and not the "
                                "output of an ssft-video run (no events.jsonl): nothing in it "
                                "is deleted; choose a new or empty folder")


def _clear_run(out: Path) -> None:
    """Delete what a previous run wrote into ``out`` (see the module docstring)."""
    rankings = out / "rankings"
    pictures = [] if rankings.is_symlink() else rankings.glob("*.jpg")  # never outside out
    # NAME.avi only beside NAME.mot.txt: an input video kept in the folder stays
    mot = list(out.glob("*.mot.txt"))
    videos = [p.with_name(p.name[:-len(".mot.txt")] + ".avi") for p in mot]
    old = [out / "events.jsonl", out / "tracks.json", *mot, *videos, *pictures]
    for p in old:
        if p.is_file() or p.is_symlink():
            p.unlink()
    if rankings.is_dir() and not rankings.is_symlink() and not any(rankings.iterdir()):
        rankings.rmdir()


class RunOutput:
    """Writers of one run; every method is safe to call from camera threads. ``overwrite``:
    see the module docstring."""

    def __init__(self, out: str | Path, annotate: bool = True, pictures: bool = True,
                 overwrite: bool = False) -> None:
        self.out = Path(out)
        check_out(self.out, overwrite)
        try:
            if overwrite and self.out.is_dir():
                _clear_run(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            self._events = open(self.out / "events.jsonl", "w")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise InputError(f"cannot write to output folder {self.out}: {exc}") from exc
        self.annotate, self.pictures = annotate, pictures
        self.lock = threading.Lock()
        self._mot: dict[str, object] = {}
        self._videos: dict[str, cv2.VideoWriter] = {}
        self.labels: dict[tuple[str, int], str] = {}
        self.n_events = 0
        self._pictures: set[str] = set()

    def _path(self, name: str) -> Path:
        """``out / name``, or InputError when ``name`` would lead outside ``out``."""
        path = self.out / name
        if ".." in Path(name).parts or Path(name).is_absolute() or "\0" in name:
            raise InputError(f"refusing to write {name!r}: outside the output folder {self.out}")
        return path

    def event(self, event: dict) -> None:
        with self.lock:
            self._events.write(json.dumps(event) + "\n")
            self._events.flush()
            self.n_events += 1

    def boxes(self, camera: str, index: int, xyxy: np.ndarray, scores: np.ndarray,
              ids: np.ndarray) -> None:
        """Append one frame's tracked boxes to ``NAME.mot.txt`` (frames from 1)."""
        with self.lock:
            f = self._mot.get(camera)
            if f is None:
                f = self._mot[camera] = open(self._path(f"{camera}.mot.txt"), "w")  # noqa: SIM115
        lines = [f"{index + 1},{int(t)},{b[0]:.1f},{b[1]:.1f},{b[2] - b[0]:.1f},"
                 f"{b[3] - b[1]:.1f},{s:.3f},-1,-1,-1\n" for b, s, t in zip(xyxy, scores, ids)]
        f.writelines(lines)  # one camera thread per file

    def frame(self, camera: str, modality: str, bgr: np.ndarray, xyxy: np.ndarray,
              ids: np.ndarray, fps: float) -> None:
        """Draw boxes, track ids and identities on a copy of ``bgr`` and write it."""
        if not self.annotate:
            return
        img = bgr.copy()
        colour = _COLOURS.get(modality, (255, 255, 255))
        for b, t in zip(xyxy.astype(int), ids):
            cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), colour, 2)
            label = f"{camera} #{int(t)} {self.labels.get((camera, int(t)), '')}".rstrip()
            cv2.putText(img, label, (b[0], max(b[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        colour, 1, cv2.LINE_AA)
        writer = self._videos.get(camera)
        if writer is None:
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(str(self._path(f"{camera}.avi")),
                                     cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            if not writer.isOpened():
                raise InputError(f"OpenCV cannot write {self.out / f'{camera}.avi'} (MJPG)")
            self._videos[camera] = writer
        writer.write(img)

    def picture(self, event: dict, query_thumb: np.ndarray | None,
                gallery_thumbs: list[np.ndarray | None]) -> str | None:
        """The event's ranking picture (query + its matches); returns its relative path."""
        if not self.pictures or query_thumb is None:
            return None
        q = Tile(query_thumb, [f"{event['modality'].upper()} {event['camera']}",
                               f"track {event['track']}"])
        tiles = []
        for m, thumb in zip(event["matches"], gallery_thumbs):
            if thumb is None:
                continue
            tiles.append(Tile(thumb, [f"{m['camera']} #{m['track']}",
                                      f"id {m['identity']} d={m['distance']:.3f}"]))
        stem = f"rankings/{event['camera']}_{event['track']}_{event['start_frame']}"
        with self.lock:     # a track id may come again (a tracker restart, a looping file)
            rel, n = f"{stem}.jpg", 1
            while rel in self._pictures:
                n += 1
                rel = f"{stem}_{n}.jpg"
            self._pictures.add(rel)
        save_picture(self._path(rel), ranking_picture(q, tiles))
        return rel

    def tracks(self, summary: dict) -> None:
        (self.out / "tracks.json").write_text(json.dumps(summary, indent=1) + "\n")

    def close(self) -> None:
        with self.lock:
            self._events.close()
            for f in self._mot.values():
                f.close()
            for w in self._videos.values():
                w.release()


def check_paths(out: str | Path, cameras: list[str], annotate: bool = True) -> None:
    """Refuse, before any work, an output folder that is a file or a file this run writes that
    is taken by a folder (e.g. ``OUT/cam1.avi`` a folder: OpenCV's writer only said so once the
    first frame was written, and the run went on with warnings)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    names = ["events.jsonl", "tracks.json", *(f"{c}.mot.txt" for c in cameras),
             *(f"{c}.avi" for c in cameras if annotate)]
    for name in names:
        if (out / name).is_dir():
            raise InputError(f"cannot write {out / name}: a folder of that name is in the way")

