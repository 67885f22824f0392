"""Phase 1: stereo clips -> 4D annotations (depth, camera trajectory, object centres).

Clips: ``clip`` (the in-memory clip and its folder format), ``video`` (H.264 encode / decode),
``sources`` (KITTI drives, side-by-side videos, frame folders), ``synth`` (the ``mllm4d synth``
command: ``scene`` samples a scene, ``textures`` paints it, ``render`` ray-casts both views).
Curation: ``stereo`` (disparity) -> ``odometry`` with ``bundle_adjust`` (camera trajectory) ->
``tracks`` (object centres and yaw) -> ``annotation`` (the annotation schema); ``curate`` is the
``mllm4d curate`` command and ``scorecard`` scores its output against ground truth.
"""
