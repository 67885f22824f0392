"""``mllm4d fetch`` against a loopback HTTP server: a tiny KITTI-layout drive (PNG frames, OXTS of a
known trajectory, calibration) and a side-by-side video. Frames, K, baseline and poses must come
back exactly; a dropped connection is resumed with a Range request; a checksum mismatch is one
error line and leaves nothing behind; the licence is recorded; curate --score scores the camera."""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from mllm4d_lite.curation import fetch, kitti
from mllm4d_lite.curation.clip import load_clip
from mllm4d_lite.curation.video import read_video, write_video

DRIVE, DATE = "2011_09_26_drive_0005", "2011_09_26"
N, H, W = 4, 49, 65  # odd sizes, as KITTI's 1242x375: the clip is cropped to 64x48
FX, CX, CY, BASELINE_M = 60.0, 32.0, 24.0, 0.54
P2_T = np.array([4.485728e+01, 2.163791e-01, 2.745884e-03]) * (FX / 721.5377)  # KITTI's cam-2 offset, scaled
P3_X = -BASELINE_M * FX + P2_T[0]


def _orthonormal(r):
    u, _, vt = np.linalg.svd(np.asarray(r, float).reshape(3, 3))
    return u @ vt


# Real 2011_09_26 calibration (R made exactly orthonormal so that poses are rigid).
R_VELO_IMU = _orthonormal([9.999976e-01, 7.553071e-04, -2.035826e-03, -7.854027e-04, 9.998898e-01, -1.482298e-02,
                           2.024406e-03, 1.482454e-02, 9.998881e-01])
T_VELO_IMU = np.array([-8.086759e-01, 3.195559e-01, -7.997231e-01])
R_CAM_VELO = _orthonormal([7.533745e-03, -9.999714e-01, -6.166020e-04, 1.480249e-02, 7.280733e-04, -9.998902e-01,
                           9.998621e-01, 7.523790e-03, 1.480755e-02])
T_CAM_VELO = np.array([-4.069766e-03, -7.631618e-02, -2.717806e-01])
R_RECT = _orthonormal([9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01, -4.278459e-03,
                       7.402527e-03, 4.351614e-03, 9.999631e-01])


def _mat(r, t):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def _rot_y(a):
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _known_camera_path():
    """The left camera's true camera_to_world: 1.2 m forward per frame, turning left 4 deg per frame,
    rising 2 cm per frame (up = -y)."""
    out = []
    for i in range(N):
        out.append(_mat(_rot_y(-math.radians(4.0 * i)), [-0.05 * i * i, -0.02 * i, 1.2 * i]))
    return np.stack(out)


LAT0, LON0 = 49.011212804408, 8.4228850417969  # the first OXTS record of the real drive 0005
SCALE0 = math.cos(math.radians(LAT0))  # the devkit's Mercator scale: that of the first latitude


def _mercator(lat, lon):
    er = kitti.EARTH_RADIUS_M
    return SCALE0 * lon * math.pi * er / 180.0, SCALE0 * er * math.log(math.tan((90.0 + lat) * math.pi / 360.0))


def _oxts_lines(imu_world):
    """IMU-to-Mercator-world poses -> OXTS records (inverse Mercator, Rz Ry Rx angles)."""
    scale, er = SCALE0, kitti.EARTH_RADIUS_M
    lines = []
    for m in imu_world:
        tx, ty, alt = m[:3, 3]
        lon = tx * 180.0 / (scale * math.pi * er)
        lat = 360.0 / math.pi * math.atan(math.exp(ty / (scale * er))) - 90.0
        r = m[:3, :3]
        yaw, pitch, roll = math.atan2(r[1, 0], r[0, 0]), -math.asin(r[2, 0]), math.atan2(r[2, 1], r[2, 2])
        rest = " ".join(["0.1"] * 19 + ["4", "10", "4", "4", "6"])
        lines.append(" ".join(repr(float(v)) for v in (lat, lon, alt, roll, pitch, yaw)) + " " + rest)
    return lines


def _frames(seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (N, H // 8 + 1, W // 8 + 1, 3), dtype=np.uint8)  # 8x8 blocks: little codec loss
    return np.stack([cv2.resize(f, (8 * f.shape[1], 8 * f.shape[0]), interpolation=cv2.INTER_NEAREST)[:H, :W]
                     for f in small])


def _assert_video_frames(got, want, interior_max):
    """``got`` (decoded H.264 yuv420) holds ``want`` (8x8-pixel colour blocks): within ``interior_max``
    away from block edges (where chroma filtering blurs colours), and a one-pixel shift fits worse."""
    assert got.shape == want.shape
    err = np.abs(got.astype(int) - want)
    inner = np.ones(want.shape[1:3], bool)
    for k in range(0, want.shape[2] + 1, 8):
        inner[:, max(k - 2, 0): k + 2] = False
    for k in range(0, want.shape[1] + 1, 8):
        inner[max(k - 2, 0): k + 2, :] = False
    assert err[:, inner].max() <= interior_max and err.mean() < 6, (err[:, inner].max(), err.mean())
    for shift in (-1, 1):
        assert np.abs(np.roll(got, shift, axis=2).astype(int) - want).mean() > 2 * err.mean()


def _png(frame):
    return cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()


def _calib_files():
    def fmt(v):
        return " ".join(f"{x:.12e}" for x in np.ravel(v))

    p2 = [FX, 0, CX, P2_T[0], 0, FX, CY, P2_T[1], 0, 0, 1, P2_T[2]]
    p3 = [FX, 0, CX, P3_X, 0, FX, CY, 0, 0, 0, 1, 0]
    cam = ["calib_time: 09-Jan-2012 13:57:47", f"R_rect_00: {fmt(R_RECT)}"]
    cam += [f"P_rect_{c:02d}: {fmt(p)}" for c, p in ((0, p2), (1, p3), (2, p2), (3, p3))]
    return {
        "calib_cam_to_cam.txt": "\n".join(cam) + "\n",
        "calib_imu_to_velo.txt": f"calib_time: x\nR: {fmt(R_VELO_IMU)}\nT: {fmt(T_VELO_IMU)}\n",
        "calib_velo_to_cam.txt": f"calib_time: x\nR: {fmt(R_CAM_VELO)}\nT: {fmt(T_CAM_VELO)}\n",
    }


def _zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_kitti_drive():
    """{"files": {url path: bytes}, "left", "right", "c2w"}: a KITTI-layout drive + calib zip."""
    left, right = _frames(1), _frames(2)
    c2w = _known_camera_path()
    # T_cam2_imu built here from the four calibration pieces (written to the files below)
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(np.array([[FX, 0, CX], [0, FX, CY], [0, 0, 1]]), P2_T)
    t_cam_imu = shift @ _mat(R_RECT, 0) @ _mat(R_CAM_VELO, T_CAM_VELO) @ _mat(R_VELO_IMU, T_VELO_IMU)
    start = _mat(_orthonormal(cv2.Rodrigues(np.array([0.02, -0.03, 1.1]))[0]), [*_mercator(LAT0, LON0), 115.0])
    imu_world = start @ np.linalg.inv(t_cam_imu) @ c2w @ t_cam_imu
    root = f"{DATE}/{DRIVE}_sync/"
    files = {}
    stamps = "\n".join(f"2011-09-26 13:02:25.{i * 103_000_000 + 5:09d}" for i in range(N)) + "\n"
    for cam, frames in (("image_02", left), ("image_03", right), ("image_00", left)):
        for i, f in enumerate(frames):
            files[f"{root}{cam}/data/{i:010d}.png"] = _png(f)
        files[f"{root}{cam}/timestamps.txt"] = stamps
    for i, line in enumerate(_oxts_lines(imu_world)):
        files[f"{root}oxts/data/{i:010d}.txt"] = line + "\n"
    files[f"{root}oxts/timestamps.txt"] = stamps
    files[f"{root}velodyne_points/data/0000000000.bin"] = b"\0" * 64  # not kept
    calib = {f"{DATE}/{k}": v for k, v in _calib_files().items()}
    served = {f"/raw/{DRIVE}/{DRIVE}_sync.zip": _zip(files), f"/raw/{DATE}_calib.zip": _zip(calib)}
    return {"files": served, "left": left, "right": right, "c2w": c2w}


@pytest.fixture(scope="module")
def kitti_drive():
    return make_kitti_drive()


class _Server:
    """A loopback HTTP server with Range support; paths in ``drop_once`` lose the connection half way
    through their first response."""

    def __init__(self, files):
        self.files, self.drop_once, self.requests = dict(files), set(), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in outer.drop_once and not rng:
                    outer.drop_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(kitti_drive, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _Server(kitti_drive["files"])
    yield srv
    srv.close()


def _kitti_args(server, tmp_path, *extra):
    return [f"kitti:{DRIVE}", "--out", str(tmp_path / "out"), "--base-url", server.url + "/raw",
            "--cache", str(tmp_path / "cache"), "--retry-wait-s", "0", "--timeout-s", "10", *extra]


def test_kitti_round_trip_with_resume(server, kitti_drive, tmp_path, capsys):
    """Frames, K, baseline and OXTS poses come back exactly; the dropped drive download resumes."""
    zip_path = f"/raw/{DRIVE}/{DRIVE}_sync.zip"
    server.drop_once.add(zip_path)
    assert fetch.main(_kitti_args(server, tmp_path, "--keep-raw", "--crf", "0")) == 0
    out = capsys.readouterr().out
    assert out.index("CC BY-NC-SA 3.0") < out.index("mllm4d fetch: " + DRIVE)  # licence printed first
    # resumed: the second request asked for the rest, from the byte where the first one broke off
    drive_requests = [r for p, r in server.requests if p == zip_path]
    half = (len(kitti_drive["files"][zip_path])) // 2
    assert drive_requests == [None, f"bytes={half}-"]
    assert not list((tmp_path / "cache").glob("*.part"))
    clip_dir = tmp_path / "out" / DRIVE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [DRIVE]  # no temporary folder left
    clip = load_clip(clip_dir)
    meta = json.loads((clip_dir / "clip.json").read_text())
    assert meta["license"].startswith("CC BY-NC-SA 3.0") and meta["source"] == "kitti_raw"
    assert meta["fetch"]["cropped_to_even_px"] == [1, 1]
    assert meta["fetch"]["files"][0]["sha256"] == hashlib.sha256(kitti_drive["files"][zip_path]).hexdigest()
    # K and baseline exactly as P_rect_02 / P_rect_03 say
    assert np.array_equal(clip.K, [[FX, 0, CX], [0, FX, CY], [0, 0, 1]])
    assert clip.baseline_m == pytest.approx(BASELINE_M, rel=1e-12)
    assert clip.fps == pytest.approx(1 / 0.103, rel=1e-6)
    # frames: the kept PNGs are the served ones; the videos hold them cropped to 64x48 (H.264 yuv420)
    raw = clip_dir / "kitti_raw" / DATE / f"{DRIVE}_sync"
    for cam, frames in (("image_02", kitti_drive["left"]), ("image_03", kitti_drive["right"])):
        pngs = sorted((raw / cam / "data").glob("*.png"))
        assert [p.read_bytes() for p in pngs] == [_png(f) for f in frames]
    assert (clip.num_frames, clip.height, clip.width) == (N, H - 1, W - 1)
    for got, want in ((clip.left, kitti_drive["left"]), (clip.right, kitti_drive["right"])):
        _assert_video_frames(got, want[:, : H - 1, : W - 1], interior_max=3)  # --crf 0: lossless luma
    assert not (raw.parent.parent / DATE / f"{DRIVE}_sync" / "velodyne_points").exists()
    assert (raw / "oxts" / "data" / "0000000003.txt").is_file()
    # poses: the known trajectory, through the real calibration chain
    assert clip.gt["objects"] == []
    np.testing.assert_allclose(np.asarray(clip.gt["camera_to_world"]), kitti_drive["c2w"], atol=1e-8)


def test_oxts_conventions_by_hand():
    """A car heading north (yaw 90 deg) drives 1 m per frame and turns left 0.1 rad per frame; with the
    IMU axes mapped onto the camera (z = IMU x forward, x = -IMU y, y = -IMU z) the camera moves along
    +z and turns left (yaw up, centre to -x on later frames), first pose = identity."""
    lat0, er = 48.0, kitti.EARTH_RADIUS_M
    scale = math.cos(math.radians(lat0))
    ty0 = scale * er * math.log(math.tan((90 + lat0) * math.pi / 360))
    oxts = []
    north = 0.0
    for i in range(4):
        yaw = math.pi / 2 + 0.1 * i
        lat = 360 / math.pi * math.atan(math.exp((ty0 + north) / (scale * er))) - 90
        oxts.append([lat, 11.0, 500.0, 0.0, 0.0, yaw])
        north += 1.0  # metres north between frames (the heading changes after the move)
    t_cam_imu = _mat(np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float), [0, 0, 0])
    poses = kitti.camera_poses(np.array(oxts), t_cam_imu)
    for i in range(4):
        np.testing.assert_allclose(poses[i, :3, 3], [0, 0, i], atol=1e-6)  # straight north = straight ahead
        np.testing.assert_allclose(poses[i, :3, :3], _rot_y(-0.1 * i), atol=1e-9)  # left turn about -y
        forward = poses[i, :3, 2]
        assert math.atan2(forward[2], forward[0]) == pytest.approx(math.pi / 2 + 0.1 * i)  # kit yaw grows to the left


def test_checksum_mismatch_leaves_nothing(server, kitti_drive, tmp_path, capsys):
    sums = tmp_path / "SHA256SUMS"
    wrong = "0" * 64
    calib_sha = hashlib.sha256(kitti_drive["files"][f"/raw/{DATE}_calib.zip"]).hexdigest()
    sums.write_text(f"{wrong}  {DRIVE}_sync.zip\n{calib_sha}  {DATE}_calib.zip\n")
    server.drop_once.add(f"/raw/{DRIVE}/{DRIVE}_sync.zip")  # a resumed download is checked as a whole
    rc = fetch.main(_kitti_args(server, tmp_path, "--checksums", str(sums)))
    err = capsys.readouterr().err
    assert rc == 2 and "sha256 mismatch" in err and f"{DRIVE}_sync.zip" in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # --out was not there before: nothing half-written is left
    assert list((tmp_path / "cache").iterdir()) == []  # no .part, no bad file
    # into an existing --out with another clip: that clip stays, nothing is added
    (tmp_path / "out" / "other").mkdir(parents=True)
    assert fetch.main(_kitti_args(server, tmp_path, "--checksums", str(sums))) == 2
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["other"]
    # the right checksums pass
    sums.write_text(f"{hashlib.sha256(kitti_drive['files'][f'/raw/{DRIVE}/{DRIVE}_sync.zip']).hexdigest()}  "
                    f"{DRIVE}_sync.zip\n{calib_sha}  {DATE}_calib.zip\n")
    assert fetch.main(_kitti_args(server, tmp_path, "--checksums", str(sums), "--max-frames", "3")) == 0
    files = json.loads((tmp_path / "out" / DRIVE / "clip.json").read_text())["fetch"]["files"]
    assert [(f["name"], f["checksum"]) for f in files] == [(f"{DRIVE}_sync.zip", "verified"),
                                                           (f"{DATE}_calib.zip", "verified")]
    clip = load_clip(tmp_path / "out" / DRIVE)
    assert clip.num_frames == 3 and len(clip.gt["camera_to_world"]) == 3


def test_resume_in_a_later_run(server, kitti_drive, tmp_path, capsys):
    """Out of resumptions: one error line, the .part is kept, --out untouched; the next run resumes it."""
    zip_path = f"/raw/{DRIVE}/{DRIVE}_sync.zip"
    server.drop_once.add(zip_path)
    assert fetch.main(_kitti_args(server, tmp_path, "--retries", "0")) == 2
    err = capsys.readouterr().err
    half = len(kitti_drive["files"][zip_path]) // 2
    assert "run the same command again to resume" in err and f"{half} bytes kept" in err and err.count("\n") == 1
    parts = list((tmp_path / "cache").glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == half and not (tmp_path / "out").exists()
    assert fetch.main(_kitti_args(server, tmp_path)) == 0
    assert [r for p, r in server.requests if p == zip_path] == [None, f"bytes={half}-"]
    assert not list((tmp_path / "cache").glob("*.part")) and (tmp_path / "out" / DRIVE / "gt.json").is_file()


def test_bad_sources_are_one_line(server, tmp_path, capsys):
    assert fetch.main(_kitti_args(server, tmp_path)[1:] + ["--source", "kitti:2011_09_26_drive_9999"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "--base-url" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        fetch.main(["kitti:2011_09_26", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "kitti:2011_09_26_drive_0005" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fetch.main([str(tmp_path / "v.mp4"), "--out", str(tmp_path / "o")])  # a video needs --calib
    assert "--calib" in capsys.readouterr().err


def test_side_by_side_from_url(server, tmp_path, capsys):
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
    left = np.stack([cv2.resize(f, (64, 48), interpolation=cv2.INTER_NEAREST) for f in small])
    right = np.roll(left, -8, axis=2)  # 8 px disparity, block-aligned
    video = tmp_path / "walk.mp4"
    write_video(video, np.concatenate([left, right], axis=2), fps=12.0, crf=0)
    server.files["/v/walk.mp4"] = data = video.read_bytes()
    server.drop_once.add("/v/walk.mp4")
    calib = tmp_path / "walk.calib.yaml"
    calib.write_text("fx: 50.0\ncx: 31.5\ncy: 23.5\nbaseline_m: 0.065\n")
    base = [server.url + "/v/walk.mp4", "--calib", str(calib), "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--retry-wait-s", "0", "--license", "CC BY 4.0 (test clip)", "--crf", "0"]
    assert fetch.main(base + ["--sha256", "f" * 64]) == 2  # wrong checksum
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and list((tmp_path / "cache").iterdir()) == []
    server.drop_once.add("/v/walk.mp4")
    assert fetch.main(base + ["--sha256", hashlib.sha256(data).hexdigest()]) == 0
    assert "CC BY 4.0" in capsys.readouterr().out
    clip = load_clip(tmp_path / "out" / "walk")
    assert clip.license == "CC BY 4.0 (test clip)" and clip.source == "side_by_side_full"
    assert np.array_equal(clip.K, [[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]]) and clip.baseline_m == 0.065
    assert clip.fps == 12.0 and clip.num_frames == 5
    decoded, _, _ = read_video(video)
    assert np.array_equal(decoded.shape, (5, 48, 128, 3))
    # the clip re-encodes the decoded source (crf 0): the source's chroma blur widens a little more
    for got, want in ((clip.left, decoded[:, :, :64]), (clip.right, decoded[:, :, 64:])):
        _assert_video_frames(got, want, interior_max=8)
    assert (tmp_path / "out" / "walk" / "calib.yaml").read_text() == calib.read_text()
    # a local file: no download, the same checks
    local = [str(video), "--calib", str(calib), "--out", str(tmp_path / "out"), "--clip-id", "walk_local"]
    assert fetch.main(local + ["--sha256", "0" * 64]) == 2 and "sha256 mismatch" in capsys.readouterr().err
    assert fetch.main(local + ["--max-frames", "3"]) == 0
    assert "licence of" in capsys.readouterr().out
    local_clip = load_clip(tmp_path / "out" / "walk_local")
    assert local_clip.num_frames == 3 and local_clip.license.startswith("unknown")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["walk", "walk_local"]


def test_curate_scores_camera_of_fetched_kitti(server, tmp_path, capsys):
    """A clip with camera ground truth but no objects: camera ATE scored, objects reported absent."""
    from mllm4d_lite.curation import curate

    assert fetch.main(_kitti_args(server, tmp_path)) == 0
    run = tmp_path / "curated"
    assert curate.main(["--clips", str(tmp_path / "out"), "--out", str(run), "--score", "true",
                        "--qa", "false", "--min-depth-m", "2"]) == 0
    text = capsys.readouterr().out
    card = json.loads((run / "scorecard.json").read_text())
    cam = card["per_clip"][0]["camera"]
    path_m = float(np.linalg.norm(np.diff(_known_camera_path()[:, :3, 3], axis=0), axis=1).sum())
    assert cam["path_length_m"] == pytest.approx(path_m, rel=1e-6) and math.isfinite(cam["ate_median_m"])
    assert card["objects"]["gt_objects"] == 0 and "absent" in card["objects"]
    assert card["pass"]["object_centres"] is None and card["pass"]["object_direction"] is None
    assert card["pass"]["disparity_recorded"] is None and isinstance(card["pass"]["camera_ate"], bool)
    assert "objects: absent" in text and "object_centres n/a" in text


def _unzip_raw(kitti_drive, root):
    """The served drive and calibration zips unpacked by hand, as a user would: root/DATE/..."""
    for name in (f"/raw/{DRIVE}/{DRIVE}_sync.zip", f"/raw/{DATE}_calib.zip"):
        with zipfile.ZipFile(io.BytesIO(kitti_drive["files"][name])) as z:
            z.extractall(root)
    return root / DATE / f"{DRIVE}_sync"


def test_curate_reads_oxts_of_a_raw_drive_folder(kitti_drive, tmp_path, capsys, caplog):
    """curate --clips on an unzipped raw drive reads its OXTS poses (the known path) and scores the
    camera; without the IMU calibration it warns, naming the file, and curates without ground truth."""
    from mllm4d_lite.curation import curate, sources

    drive = _unzip_raw(kitti_drive, tmp_path / "raw")
    clip = sources.find_sources(drive)[0].load()
    np.testing.assert_allclose(np.asarray(clip.gt["camera_to_world"]), kitti_drive["c2w"], atol=1e-8)
    assert curate.main(["--clips", str(drive), "--out", str(tmp_path / "run"), "--score", "true",
                        "--qa", "false", "--min-depth-m", "2"]) == 0
    card = json.loads((tmp_path / "run" / "scorecard.json").read_text())
    path_m = float(np.linalg.norm(np.diff(kitti_drive["c2w"][:, :3, 3], axis=0), axis=1).sum())
    assert card["per_clip"][0]["camera"]["path_length_m"] == pytest.approx(path_m, rel=1e-6)

    (drive.parent / "calib_imu_to_velo.txt").unlink()
    with caplog.at_level("WARNING"):
        clip = sources.find_sources(drive)[0].load()
    assert clip.gt is None and clip.num_frames == N
    assert "calib_imu_to_velo.txt" in caplog.text and "without camera ground truth" in caplog.text
    with pytest.raises(Exception, match="calib_imu_to_velo.txt"):
        sources.load_kitti_raw(drive, oxts=True)  # fetch's strict mode still refuses
