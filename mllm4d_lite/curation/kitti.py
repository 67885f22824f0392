"""KITTI raw: OXTS GPS/IMU records and the IMU/LiDAR/camera calibration -> left colour camera poses.

Pure numpy, no downloads (see :mod:`mllm4d_lite.curation.fetch` for those). The conventions are
KITTI's own (Geiger et al., "Vision meets Robotics: The KITTI Dataset", IJRR 2013, and the raw
data devkit):

* An OXTS record (``oxts/data/NNNNNNNNNN.txt``) holds 30 numbers; the first six are latitude and
  longitude (degrees), altitude (m), roll, pitch and yaw (rad). yaw = 0 points east and grows
  counter-clockwise seen from above; the IMU frame is x forward, y left, z up.
* ``convertOxtsToPose.m`` of the devkit turns them into IMU poses: a Mercator projection with the
  scale of the first frame's latitude (``latToScale``, ``latlonToMercator``) for the position,
  ``R = Rz(yaw) Ry(pitch) Rx(roll)`` for the rotation, and the first pose as the origin.
* ``calib_imu_to_velo.txt`` / ``calib_velo_to_cam.txt`` hold ``R`` (9 numbers) and ``T`` (3)
  mapping IMU -> Velodyne and Velodyne -> unrectified camera 0 coordinates;
  ``calib_cam_to_cam.txt`` holds ``R_rect_00`` (camera 0 -> rectified camera 0) and the rectified
  projections ``P_rect_0i = K [I | t_i]`` of each camera in rectified camera 0 coordinates.

The kit's camera convention (docs/data-format.md "Coordinates") is OpenCV's, the same as KITTI's
rectified cameras (x right, y down, z forward), so only the frame changes: the trajectory is
``camera_to_world`` of the left colour camera (cam 2) with the world = cam 2 at the first frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mllm4d_lite.curation.clip import ClipError

#: WGS-84 equatorial radius (m), as in the devkit's latlonToMercator.m
EARTH_RADIUS_M = 6378137.0


def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """A KITTI calibration text file (``key: v1 v2 ...`` lines) -> {key: float array}; lines that
    are not numbers (``calib_time``) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"{path}: KITTI calibration file not found; it comes with the date's calib.zip")
    rows: dict[str, np.ndarray] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            rows[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            continue
    return rows


def _rigid(path: Path, rows: dict[str, np.ndarray]) -> np.ndarray:
    """4x4 rigid transform from the ``R`` (9) and ``T`` (3) rows of a calibration file."""
    r, t = rows.get("R"), rows.get("T")
    if r is None or r.size != 9 or t is None or t.size != 3 or not np.all(np.isfinite(np.r_[r, t])):
        raise ClipError(f"{path}: needs finite `R:` (9 numbers) and `T:` (3 numbers); is this a KITTI calib file?")
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r.reshape(3, 3), t
    return out


def cam2_from_imu(calib_dir: str | Path, cam: int = 2) -> np.ndarray:
    """4x4 transform taking IMU coordinates to rectified camera ``cam`` coordinates.

    ``T_cam_imu = T_cam_rect0 @ R_rect_00 @ T_cam0_velo @ T_velo_imu``, with ``T_cam_rect0`` the pure
    translation ``t = K^-1 P_rect_0cam[:, 3]`` (P = K [I | t] for a rectified camera)."""
    calib_dir = Path(calib_dir)
    imu_path, velo_path = calib_dir / "calib_imu_to_velo.txt", calib_dir / "calib_velo_to_cam.txt"
    cam_path = calib_dir / "calib_cam_to_cam.txt"
    t_velo_imu = _rigid(imu_path, read_calib_file(imu_path))
    t_cam0_velo = _rigid(velo_path, read_calib_file(velo_path))
    rows = read_calib_file(cam_path)
    r_rect, p_rect = rows.get("R_rect_00"), rows.get(f"P_rect_{cam:02d}")
    if r_rect is None or r_rect.size != 9 or p_rect is None or p_rect.size != 12:
        raise ClipError(f"{cam_path}: needs R_rect_00 (9 numbers) and P_rect_{cam:02d} (12 numbers)")
    rect = np.eye(4)
    rect[:3, :3] = r_rect.reshape(3, 3)
    p = p_rect.reshape(3, 4)
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(p[:, :3], p[:, 3])
    return shift @ rect @ t_cam0_velo @ t_velo_imu


def read_oxts(oxts_dir: str | Path, max_frames: int | None = None) -> np.ndarray:
    """``oxts/data/*.txt`` (sorted) -> (N, 6) float64: lat, lon (deg), alt (m), roll, pitch, yaw (rad)."""
    data_dir = Path(oxts_dir) / "data"
    files = sorted(data_dir.glob("*.txt")) if data_dir.is_dir() else []
    if not files:
        raise ClipError(f"{data_dir}: no OXTS records (*.txt); the drive's oxts/ folder is missing or empty")
    files = files[: max_frames or None]
    out = np.empty((len(files), 6))
    for i, path in enumerate(files):
        try:
            values = [float(v) for v in path.read_text().split()[:6]]
        except ValueError:
            values = []
        if len(values) != 6 or not np.all(np.isfinite(values)):
            raise ClipError(f"{path}: an OXTS record starts with 6 finite numbers (lat lon alt roll pitch yaw); "
                            "the file is malformed")
        out[i] = values
    return out


def oxts_to_imu_poses(oxts: np.ndarray) -> np.ndarray:
    """(N, 6) OXTS lat/lon/alt/roll/pitch/yaw -> (N, 4, 4) IMU poses relative to the first one.

    The devkit's convertOxtsToPose.m: Mercator position ``(s * lon * pi * R / 180,
    s * R * log(tan((90 + lat) * pi / 360)), alt)`` with ``s = cos(lat_0)``, rotation
    ``Rz(yaw) Ry(pitch) Rx(roll)``; pose_i = inv(T_0) @ T_i (IMU i -> IMU 0)."""
    oxts = np.asarray(oxts, dtype=np.float64)
    scale = np.cos(np.radians(oxts[0, 0]))
    lat, lon, alt = oxts[:, 0], oxts[:, 1], oxts[:, 2]
    tx = scale * lon * np.pi * EARTH_RADIUS_M / 180.0
    ty = scale * EARTH_RADIUS_M * np.log(np.tan((90.0 + lat) * np.pi / 360.0))
    poses = np.tile(np.eye(4), (len(oxts), 1, 1))
    for i, (roll, pitch, yaw) in enumerate(oxts[:, 3:6]):
        cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
        rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        poses[i, :3, :3] = rz @ ry @ rx
        poses[i, :3, 3] = tx[i], ty[i], alt[i]
    return np.linalg.inv(poses[0]) @ poses


def camera_poses(oxts: np.ndarray, t_cam_imu: np.ndarray) -> np.ndarray:
    """(N, 4, 4) ``camera_to_world`` of the camera ``t_cam_imu`` belongs to, world = that camera at
    frame 0 (docs/data-format.md): ``T_cam_imu @ imu_pose_i @ inv(T_cam_imu)``; the first is I."""
    t_cam_imu = np.asarray(t_cam_imu, dtype=np.float64)
    return t_cam_imu @ oxts_to_imu_poses(oxts) @ np.linalg.inv(t_cam_imu)


def drive_camera_poses(drive_dir: str | Path, calib_dir: str | Path, max_frames: int | None = None) -> np.ndarray:
    """The left colour camera's ground-truth trajectory of a KITTI raw drive folder (see the module docstring)."""
    return camera_poses(read_oxts(Path(drive_dir) / "oxts", max_frames), cam2_from_imu(calib_dir))
