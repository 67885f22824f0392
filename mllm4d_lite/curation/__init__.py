"""Phase 1: stereo clips -> 4D annotations (depth, camera trajectory, object centres)."""
