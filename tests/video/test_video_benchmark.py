"""The video benchmark's smoke mode runs end to end (tiny videos, every decode verified)."""

import json

from benchmarks import video as bench


def test_video_benchmark_smoke(tmp_path):
    out = tmp_path / "video.json"
    assert bench.main(["--smoke", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "video-cpu" and result["all_frames_verified"]
    assert "device" in result["environment"] and "versions" in result["environment"]
    rows = result["cpu"]["pyav/h264"]
    assert set(rows) == {"uniform", "segment", "complement", "incomplete", "downsample"}
    assert all(r["frames_per_s"] > 0 for r in rows.values())
    assert rows["downsample"]["frames"] == 4  # 8 frames thinned by 2
