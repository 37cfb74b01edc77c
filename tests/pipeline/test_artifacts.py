"""Artifacts a resume can trust (issue 30, item 2): each stage marker records what the stage wrote (sizes,
SHA-256); a missing, truncated or altered artifact is noticed before use, and that stage and the ones after it
run again with a one-line notice, to the same result."""

from __future__ import annotations

import json

from cca_tl.cli import main as cli
from cca_tl.pipeline import Run


def test_markers_record_artifacts_and_a_truncated_mask_is_recomputed(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert cli(["run", "--preset", "tiny", "--out", str(out), "--quiet", "--stop-after", "dcm"]) == 0
    run = Run.open(out, progress=False)
    written = (out / "dcm" / "mask.safetensors").read_bytes()
    dcm = run.stage_info("dcm")["artifacts"]
    assert "dcm/mask.safetensors" in dcm and all(len(a["sha256"]) == 64 and a["size"] > 0 for a in dcm.values())
    assert run.stage_info("problems")["artifacts"].keys() == {"problems.json"}
    assert Run.open(out, progress=False).execute(stop_after="dcm")["ran"] == []  # a clean resume trusts everything

    mask = out / "dcm" / "mask.safetensors"
    mask.write_bytes(mask.read_bytes()[:100])
    capsys.readouterr()
    result = Run.open(out, progress=False).execute(stop_after="dcm")
    assert result["ran"] == ["dcm"] and result["skipped"] == ["problems", "traces", "localize"]
    notice = capsys.readouterr().out
    assert "dcm/mask.safetensors has 100 bytes" in notice and "run again" in notice
    assert (out / "stages" / "dcm.json.stale").exists()
    assert (out / "dcm" / "mask.safetensors").read_bytes() == written  # recomputed to the same result

    config = json.loads((out / "problems.json").read_text())
    (out / "problems.json").write_text(json.dumps(config) + " ")  # altered, same meaning
    result = Run.open(out, progress=False).execute(stop_after="dcm")
    assert result["ran"] == ["problems", "traces", "localize", "dcm"]  # the first stage and every later one
    assert "problems.json has" in capsys.readouterr().out
