"""``mllm4d fetch SOURCE --out DIR``: download public stereo footage into the kit's native clip format.

Sources:

* ``kitti:<date>_drive_<NNNN>`` (e.g. ``kitti:2011_09_26_drive_0005``): KITTI raw, synced and
  rectified. Downloads ``<base>/<drive>/<drive>_sync.zip`` and ``<base>/<date>_calib.zip`` (the
  layout of KITTI's ``raw_data_downloader.sh``; ``--base-url`` points elsewhere, e.g. a mirror),
  keeps the colour cameras (image_02 = left, image_03 = right), their timestamps, the OXTS records
  and the calibration, and writes the left camera's OXTS trajectory as gt.json
  (:mod:`mllm4d_lite.curation.kitti`). Licence: CC BY-NC-SA 3.0.
* a side-by-side stereo video, a local file or an http(s) URL, with ``--calib`` (the calibration
  file of :func:`mllm4d_lite.curation.sources.read_calibration`); ``--license`` states its licence.

Downloads go to ``--cache`` (default ``$XDG_CACHE_HOME/mllm4d/fetch``) as ``NAME.part`` and are
renamed when complete. A dropped connection is resumed with an HTTP ``Range`` request (``--retries``
times in one run; a later run resumes the ``.part`` too). The size is checked against
``Content-Length`` and the sha256 against ``--sha256`` / ``--checksums`` where given (KITTI publishes
no checksums, so its files are checked by size only; every file's sha256 is recorded in clip.json).
A checksum mismatch removes the download and ends with one line; nothing is written under --out.

The clip is built in a hidden temporary folder under --out and renamed into ``OUT/<clip_id>/`` in one
step, so --out never holds a half-written clip. docs/data-format.md ("Fetched clips") has the details.

Example::

    mllm4d fetch kitti:2011_09_26_drive_0005 --out data/kitti
    mllm4d curate --clips data/kitti --out runs/kitti --score --plot
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mllm4d_lite.config import ConfigError, git_revision, parse_config
from mllm4d_lite.curation import sources
from mllm4d_lite.curation.clip import Clip, ClipError, save_clip
from mllm4d_lite.io import OutputDirError, UnsafeIdError, id_path, prepare_output_dir, safe_id, write_error_text

log = logging.getLogger(__name__)

#: KITTI's public download layout (raw_data_downloader.sh on www.cvlibs.net/datasets/kitti/raw_data.php)
KITTI_BASE_URL = "https://s3.eu-central-1.amazonaws.com/avg-kitti/raw_data/"
#: the licence of KITTI raw (www.cvlibs.net/datasets/kitti, "Copyright")
KITTI_LICENSE = ("CC BY-NC-SA 3.0 (Creative Commons Attribution-NonCommercial-ShareAlike 3.0, "
                 "https://creativecommons.org/licenses/by-nc-sa/3.0/); KITTI raw data, Geiger et al., "
                 "IJRR 2013, www.cvlibs.net/datasets/kitti")
_KITTI_DRIVE = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_(\d{4})(?:_sync)?$")
_KITTI_KEEP = re.compile(r"^(image_0[23])/(data/\d+\.png|timestamps\.txt)$|^oxts/(data/\d+\.txt|timestamps\.txt|dataformat\.txt)$")
_KITTI_CALIBS = ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt")
_CHUNK = 1 << 20


class FetchError(ValueError):
    """A download or conversion failed; the message names the URL or file and the fix."""


@dataclass
class FetchConfig:
    """Options of ``mllm4d fetch`` (the positional SOURCE is ``--source``)."""

    source: str = field(default="", metadata={"help": "kitti:<date>_drive_<NNNN>, or a side-by-side video (file or http(s) URL)"})
    out: str = field(default="data/fetched", metadata={"help": "folder that receives the native clip folder OUT/<clip_id>/"})
    base_url: str = field(default=KITTI_BASE_URL, metadata={"help": "KITTI raw download base (<base>/<drive>/<drive>_sync.zip, <base>/<date>_calib.zip)"})
    calib: str = field(default="", metadata={"help": "side-by-side: calibration file (YAML/JSON, file or URL; docs/data-format.md)"})
    license: str = field(default="", metadata={"help": "side-by-side: licence of the video, recorded in clip.json"})
    sha256: str = field(default="", metadata={"help": "expected sha256 of the video (side-by-side); a mismatch is an error"})
    checksums: str = field(default="", metadata={"help": "file of `<sha256>  <file name>` lines (sha256sum format) for the downloads"})
    cache: str = field(default="", metadata={"help": "download folder (default $XDG_CACHE_HOME/mllm4d/fetch); .part files resume from here"})
    clip_id: str = field(default="", metadata={"help": "clip id (default: the drive name, or the video's stem)"})
    max_frames: int = field(default=0, metadata={"help": "keep only the first N frames (0 = all)"})
    keep_raw: bool = field(default=False, metadata={"help": "KITTI: also keep the extracted PNG frames in OUT/<clip_id>/kitti_raw/"})
    keep_downloads: bool = field(default=True, metadata={"help": "keep the downloaded files in --cache (a re-run then downloads nothing)"})
    crf: int = field(default=18, metadata={"help": "H.264 quality of left.mp4 / right.mp4 (0 = lossless luma, 18 = visually lossless)"})
    retries: int = field(default=5, metadata={"help": "resumptions of a dropped download in one run"})
    retry_wait_s: float = field(default=2.0, metadata={"help": "wait before the first resumption; doubles each time"})
    timeout_s: float = field(default=60.0, metadata={"help": "network timeout per request (s)"})

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("no SOURCE given; use `mllm4d fetch kitti:2011_09_26_drive_0005 --out DIR` or "
                              "`mllm4d fetch VIDEO.mp4 --calib CALIB.yaml --out DIR`")
        if self.max_frames < 0 or self.retries < 0 or self.retry_wait_s < 0 or self.timeout_s <= 0:
            raise ConfigError("max_frames, retries and retry_wait_s must be >= 0 and timeout_s > 0")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"crf must be in 0..51 (H.264), got {self.crf}")
        if self.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ConfigError(f"--sha256 {self.sha256!r} is not 64 hex digits; give the sha256 of the file")
        if self.source.startswith("kitti:"):
            if not _KITTI_DRIVE.match(self.source[len("kitti:"):]):
                raise ConfigError(f"SOURCE {self.source!r}: a KITTI drive is named like kitti:2011_09_26_drive_0005")
            if self.sha256:
                raise ConfigError("--sha256 names one file; a KITTI drive is two downloads: use --checksums FILE")
        elif not self.calib:
            raise ConfigError(f"SOURCE {self.source!r} is a side-by-side video and needs --calib FILE "
                              "(fx, cx, cy, baseline_m; docs/data-format.md)")


# ----------------------------------------------------------------------------- downloads
def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_checksums(path: str | Path) -> dict[str, str]:
    """A sha256sum-format file (``<64 hex>  <name>`` per line, ``*name`` allowed) -> {file name: sha256}."""
    path = Path(path)
    if not path.is_file():
        raise FetchError(f"--checksums {path}: file not found; write `<sha256>  <file name>` lines")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"\s*([0-9a-fA-F]{64})\s+\*?(.+?)\s*", line)
        if not m:
            raise FetchError(f"{path}: line {n} is not `<sha256>  <file name>`: {line.strip()!r}")
        out[Path(m.group(2)).name] = m.group(1).lower()
    return out


class _Dropped(OSError):
    """The server closed the connection before the promised number of bytes arrived."""


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return None if not m else (int(m.group(1)), None if m.group(2) == "*" else int(m.group(2)))


def _get_once(url: str, part: Path, timeout_s: float) -> tuple[int, int | None]:
    """One request for the rest of ``url`` into ``part`` (appending from its size with ``Range``).
    Returns (bytes in part, expected total or None); raises :class:`_Dropped` when short."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "mllm4d-lite fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
        length = resp.headers.get("Content-Length")
        if have and resp.status == 206:
            start_total = _content_range_start(resp.headers.get("Content-Range"))
            if start_total is None or start_total[0] != have:
                raise _Dropped(f"server answered Range bytes={have}- with {resp.headers.get('Content-Range')!r}")
            total = start_total[1]
            mode = "ab"
        else:  # 200: the server sends it all (also when it ignores Range)
            have, total, mode = 0, (int(length) if length and length.isdigit() else None), "wb"
        name = part.name[: -len(".part")]
        with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=name[-40:], disable=None, leave=False) as bar:
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Dropped(f"connection closed after {got} of {total} bytes")
    return got, total


def download(url: str, dest: Path, sha256: str | None = None, retries: int = 5, retry_wait_s: float = 2.0,
             timeout_s: float = 60.0) -> dict[str, Any]:
    """``url`` -> ``dest`` through ``dest.part``, resumed with HTTP Range after a dropped connection.

    The size is checked against Content-Length (Content-Range of a resumed request), the sha256
    against ``sha256`` when given. A mismatch removes the download and raises :class:`FetchError`;
    so does a failure after ``retries`` resumptions, which keeps the ``.part`` for the next run.
    An existing ``dest`` (an earlier complete download) is reused after the sha256 check.
    Returns ``{"url", "name", "bytes", "sha256", "checksum"}`` (``checksum``: verified / none given)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        log.info("%s: already downloaded (%s), not fetched again", url, dest)
        bad = dest
    else:
        attempt = 0
        while True:
            try:
                got, total = _get_once(url, part, timeout_s)
                if total is None:
                    log.warning("%s: the server sent no Content-Length, so the size of %d bytes is not verified",
                                url, got)
                break
            except urllib.error.HTTPError as err:
                if err.code == 416 and part.exists():  # the .part is longer than the file now: start again
                    part.unlink()
                    continue
                if err.code < 500 and err.code != 429:
                    raise FetchError(f"{url}: HTTP {err.code} {err.reason}; check the source name"
                                     + (" and --base-url" if err.code == 404 else "")) from None
                problem: Exception = err
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                problem = err
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise FetchError(f"{url}: download failed after {retries} resumptions "
                                 f"({getattr(problem, 'reason', problem)}); run the same command again to resume "
                                 f"from the {kept} bytes kept in {part}") from None
            wait = retry_wait_s * 2 ** (attempt - 1)
            log.warning("%s: %s; resuming from byte %d in %.1f s (try %d/%d)", url,
                        getattr(problem, "reason", problem), kept, wait, attempt, retries)
            time.sleep(wait)
        bad = part
    digest = sha256_file(bad)
    if sha256 and digest != sha256.lower():
        bad.unlink(missing_ok=True)
        raise FetchError(f"{url}: sha256 mismatch (expected {sha256.lower()}, got {digest}); the download was "
                         "removed and nothing was written; check the checksum or the source, then run again")
    if bad is part:
        os.replace(part, dest)
    return {"url": url, "name": Path(urllib.parse.urlparse(url).path).name or dest.name,
            "bytes": dest.stat().st_size, "sha256": digest,
            "checksum": "verified" if sha256 else "none given (size checked only)"}


def _cache_path(cache: Path, url: str) -> Path:
    """Where ``url`` is cached: its file name behind a short hash of the whole URL (no collisions)."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") or "download"
    return cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mllm4d" / "fetch"


# ----------------------------------------------------------------------------- KITTI
def kitti_urls(drive: str, base_url: str = KITTI_BASE_URL) -> dict[str, str]:
    """{"drive": <drive>_sync.zip URL, "calib": <date>_calib.zip URL} of a KITTI raw drive name."""
    m = _KITTI_DRIVE.match(drive)
    if not m:
        raise FetchError(f"{drive!r} is not a KITTI raw drive name like 2011_09_26_drive_0005")
    name, base = f"{m.group(1)}_drive_{m.group(2)}", base_url.rstrip("/") + "/"
    return {"drive": f"{base}{name}/{name}_sync.zip", "calib": f"{base}{m.group(1)}_calib.zip"}


def _extract_kitti(drive_zip: Path, calib_zip: Path, dest: Path, drive: str, max_frames: int) -> Path:
    """Unzip the kept members (colour cameras, timestamps, OXTS, calibration) into
    ``dest/<date>/<drive>_sync/`` (+ the calibration in ``dest/<date>/``); returns the drive folder.
    Member names are matched against fixed patterns and rebuilt, so no member can write elsewhere."""
    date = drive[:10]
    drive_dir = dest / date / f"{drive}_sync"
    found: set[str] = set()
    try:
        with zipfile.ZipFile(drive_zip) as zf:
            for info in zf.infolist():
                marker = f"{drive}_sync/"
                if info.is_dir() or marker not in info.filename:
                    continue
                rel = info.filename.split(marker, 1)[1]
                m = _KITTI_KEEP.match(rel)
                if not m:
                    continue
                if max_frames and "/data/" in rel and int(Path(rel).stem) >= max_frames:
                    continue
                target = drive_dir.joinpath(*rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                found.add(rel.split("/")[0])
        with zipfile.ZipFile(calib_zip) as zf:
            for info in zf.infolist():
                name = info.filename.rsplit("/", 1)[-1]
                if name in _KITTI_CALIBS and not info.is_dir():
                    (dest / date).mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest / date / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found.add(name)
    except zipfile.BadZipFile as err:
        raise FetchError(f"{drive_zip} or {calib_zip}: not a readable zip archive ({err}); delete it from the "
                         "cache and run again") from None
    missing = [x for x in ("image_02", "image_03", "oxts", *_KITTI_CALIBS) if x not in found]
    if missing:
        raise FetchError(f"{drive_zip.name} / {calib_zip.name}: no {', '.join(missing)} inside; is this a KITTI "
                         "raw synced drive and its date's calib.zip?")
    return drive_dir


def _even_crop(clip: Clip) -> list[int]:
    """Crop the last row / column of an odd-sized clip (H.264 needs even sizes; KITTI's are 1242x375 and
    the like). Cropping at the bottom/right keeps K. Returns the removed [columns, rows]."""
    h, w = clip.height, clip.width
    clip.left, clip.right = (np.ascontiguousarray(v[:, : h - h % 2, : w - w % 2]) for v in (clip.left, clip.right))
    if clip.gt_depth_m is not None:
        clip.gt_depth_m = clip.gt_depth_m[:, : h - h % 2, : w - w % 2]
    return [w % 2, h % 2]


def _checksum_for(cfg: FetchConfig, sums: dict[str, str], url: str) -> str | None:
    return sums.get(Path(urllib.parse.urlparse(url).path).name) or (cfg.sha256 or None)


def fetch_kitti(cfg: FetchConfig, cache: Path, work: Path) -> Clip:
    """Download, extract and load a KITTI raw drive (with OXTS ground truth) into a :class:`Clip`
    whose extra files (calibration, OXTS, timestamps; frames with ``keep_raw``) lie in ``work/kitti_raw``."""
    m = _KITTI_DRIVE.match(cfg.source[len("kitti:"):])
    drive = f"{m.group(1)}_drive_{m.group(2)}"
    clip_id = cfg.clip_id or drive
    urls = kitti_urls(drive, cfg.base_url)
    sums = read_checksums(cfg.checksums) if cfg.checksums else {}
    if not sums:
        log.warning("KITTI publishes no checksums: the downloads are checked by size (Content-Length) only; "
                    "their sha256 is recorded in clip.json")
    files = [download(url, _cache_path(cache, url), _checksum_for(cfg, sums, url), cfg.retries, cfg.retry_wait_s,
                      cfg.timeout_s) for url in (urls["drive"], urls["calib"])]
    raw = work / "kitti_raw"
    drive_dir = _extract_kitti(_cache_path(cache, urls["drive"]), _cache_path(cache, urls["calib"]), raw, drive,
                               cfg.max_frames)
    clip = sources.load_kitti_raw(drive_dir, max_frames=cfg.max_frames or None,
                                  calib_path=drive_dir.parent / "calib_cam_to_cam.txt", oxts=True, clip_id=clip_id)
    if not cfg.keep_raw:
        for cam in ("image_02", "image_03"):
            shutil.rmtree(drive_dir / cam / "data", ignore_errors=True)
    clip.license = KITTI_LICENSE
    clip.meta["fetch"] = {"source": f"kitti:{drive}", "files": files,
                          "kept": "kitti_raw/: calibration, OXTS, timestamps" + (", frames" if cfg.keep_raw else "")}
    if not cfg.keep_downloads:
        for url in urls.values():
            _cache_path(cache, url).unlink(missing_ok=True)
    return clip


# ----------------------------------------------------------------------------- side-by-side video
def _local_or_download(cfg: FetchConfig, cache: Path, where: str, sha256: str | None) -> tuple[Path, dict[str, Any]]:
    if _is_url(where):
        path = _cache_path(cache, where)
        return path, download(where, path, sha256, cfg.retries, cfg.retry_wait_s, cfg.timeout_s)
    path = Path(where)
    if not path.is_file():
        raise FetchError(f"{path}: file not found; give a local file or an http(s) URL")
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise FetchError(f"{path}: sha256 mismatch (expected {sha256.lower()}, got {digest}); nothing was written; "
                         "check the checksum or the file")
    return path, {"url": str(path.resolve()), "name": path.name, "bytes": path.stat().st_size, "sha256": digest,
                  "checksum": "verified" if sha256 else "none given"}


def fetch_side_by_side(cfg: FetchConfig, cache: Path, work: Path) -> Clip:
    """A side-by-side video (file or URL) + calibration -> :class:`Clip`; the calibration is copied to
    ``work/calib.yaml`` (or ``.json``)."""
    sums = read_checksums(cfg.checksums) if cfg.checksums else {}
    video, vinfo = _local_or_download(cfg, cache, cfg.source, _checksum_for(cfg, sums, cfg.source))
    calib, cinfo = _local_or_download(cfg, cache, cfg.calib, sums.get(Path(urllib.parse.urlparse(cfg.calib).path).name))
    stem = Path(urllib.parse.urlparse(cfg.source).path).stem if _is_url(cfg.source) else video.stem
    clip_id = sources._safe_id(stem, cfg.clip_id or None)
    clip = sources.load_side_by_side(video, calib, clip_id=clip_id)
    if cfg.max_frames:
        clip.left, clip.right = clip.left[: cfg.max_frames], clip.right[: cfg.max_frames]
    shutil.copyfile(calib, work / ("calib.json" if calib.suffix == ".json" else "calib.yaml"))
    clip.license = cfg.license or "unknown (not given with --license); check the video's terms before use"
    clip.meta["fetch"] = {"source": cfg.source, "files": [vinfo, cinfo]}
    if not cfg.keep_downloads and _is_url(cfg.source):
        video.unlink(missing_ok=True)
    return clip


# ----------------------------------------------------------------------------- the stage
def license_text(cfg: FetchConfig) -> str:
    """The licence line printed before any download."""
    if cfg.source.startswith("kitti:"):
        return (f"licence: {KITTI_LICENSE}. Non-commercial use only, share alike, cite the paper. "
                "It is recorded in clip.json (`license`).")
    given = cfg.license or "not given (--license); check the video's terms before use"
    return f"licence of {cfg.source}: {given}. It is recorded in clip.json (`license`)."


def fetch(cfg: FetchConfig) -> Path:
    """Run the stage: download, convert and move the clip into ``cfg.out`` in one rename; returns its folder."""
    out_existed = Path(cfg.out).is_dir()
    out = prepare_output_dir(cfg.out)
    cache = Path(cfg.cache).expanduser() if cfg.cache else _default_cache()
    kind = "kitti" if cfg.source.startswith("kitti:") else "side_by_side"
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=out))  # hidden: curate and load_clip skip it
    try:
        extra = work / "extra"
        extra.mkdir()
        clip = (fetch_kitti if kind == "kitti" else fetch_side_by_side)(cfg, cache, extra)
        if clip.num_frames < 2:
            raise FetchError(f"{cfg.source}: only {clip.num_frames} frame(s); a clip needs at least 2 for motion")
        clip.meta["fetch"].update({
            "cropped_to_even_px": _even_crop(clip), "max_frames": cfg.max_frames, "crf": cfg.crf,
            "fetched_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["mllm4d fetch", *sys.argv[2:]]) if sys.argv[1:2] == ["fetch"] else "",
            "git_revision": git_revision()})
        staged = save_clip(clip, work / "stage", crf=cfg.crf)
        for item in extra.iterdir():
            os.replace(item, staged / item.name)
        final = id_path(out, clip.clip_id, what="clip_id")
        old = None
        if final.exists():  # replace an earlier fetch of the same clip as save_clip does
            old = work / "old"
            os.replace(final, old)
        os.replace(staged, final)
        return final
    except BaseException:
        if not out_existed:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: nothing half-written is left behind
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(path: Path, clip_json: dict[str, Any], gt: dict[str, Any] | None) -> str:
    k = clip_json["K"]
    text = (f"mllm4d fetch: {clip_json['clip_id']}: {clip_json['num_frames']} frames {clip_json['width']}x"
            f"{clip_json['height']} at {clip_json['fps']:.2f} fps, fx {k[0][0]:.1f} px, baseline "
            f"{clip_json['baseline_m']:.4f} m")
    if gt is not None:
        c = np.asarray(gt["camera_to_world"], float)[:, :3, 3]
        text += f", camera ground truth from OXTS (path {np.linalg.norm(np.diff(c, axis=0), axis=1).sum():.1f} m)"
    return text + f" -> {path}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # the positional SOURCE
        argv = ["--source", argv[0], *argv[1:]]
    cfg = parse_config(FetchConfig, argv, prog="mllm4d fetch",
                       description="download public stereo footage (KITTI raw drive, side-by-side video) into "
                                   "a native clip folder: mllm4d fetch SOURCE --out DIR")
    print(license_text(cfg), flush=True)
    try:
        if cfg.clip_id:
            safe_id(cfg.clip_id, "--clip-id")
        path = fetch(cfg)
    except (FetchError, ClipError, OutputDirError, UnsafeIdError, ConfigError) as err:
        sys.stderr.write(f"mllm4d fetch: error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"mllm4d fetch: error: {write_error_text(err, cfg.out)}\n")
        return 2
    import json

    meta = json.loads((path / "clip.json").read_text())
    gt = json.loads((path / "gt.json").read_text()) if (path / "gt.json").is_file() else None
    print(_summary(path, meta, gt))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("MLLM4D_LOG_LEVEL", "INFO"))
    sys.exit(main())
