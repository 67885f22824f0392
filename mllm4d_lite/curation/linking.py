"""Greedy frame-to-frame assignment shared by the object backends that link detections into tracks
(:mod:`mllm4d_lite.curation.flow_objects`, :mod:`mllm4d_lite.curation.detector_objects`)."""

from __future__ import annotations


def greedy_assign(pairs: list[tuple[float, int, int]]) -> list[tuple[int, int]]:
    """Greedy one-to-one assignment of tracks to detections by distance.

    ``pairs``: candidate ``(distance, track index, detection index)`` triples (already gated).
    Pairs are taken in increasing distance, ties broken by track index then detection index; a
    pair is taken when neither its track nor its detection is used yet. Returns the taken
    ``(track index, detection index)`` pairs in the order they were taken.

    >>> greedy_assign([(0.5, 0, 1), (0.1, 0, 0), (0.2, 1, 0), (0.3, 1, 1)])
    [(0, 0), (1, 1)]
    """
    used_t: set[int] = set()
    used_d: set[int] = set()
    out = []
    for _, ti, di in sorted(pairs):
        if ti in used_t or di in used_d:
            continue
        used_t.add(ti)
        used_d.add(di)
        out.append((ti, di))
    return out
