"""Output safety (issue 19 item 4): camera names from a safe set, nothing written outside --out,
a second run into the same --out refused unless --overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from examples.make_video import make_videos
from ssft_deploy.errors import InputError
from ssft_deploy.video import CameraSpec, VideoPipeline, outputs
from ssft_deploy.video.cli import main


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene")
    make_videos(out, people=2, frames=16, crop_size=(64, 32), lead_in=4, seed=1)
    return out


def _run(bundle, scene, out, *extra, names=("cam1", "cam3")):
    return CliRunner().invoke(main, ["--bundle", str(bundle), "--out", str(out),
                                     "--camera", f"{names[0]}={scene / 'rgb.avi'}:rgb",
                                     "--camera", f"{names[1]}={scene / 'ir.avi'}:ir",
                                     "--every", "3", "--detector", "motion", *extra])


def test_camera_named_to_escape_the_output_folder_is_refused(scene, tiny_bundle, tmp_path):
    """``../escape`` used to write ``escape.mot.txt`` beside --out."""
    out = tmp_path / "run"
    res = _run(tiny_bundle, scene, out, names=("../escape", "cam3"))
    assert res.exit_code == 2 and "camera name" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["run"])
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".hidden", "a b", "x\\y",
                                  "", "a" * 65, "caméra", "nul\0"])
def test_unsafe_camera_names(name):
    with pytest.raises(InputError, match="camera name"):
        CameraSpec(name, "x.avi", "rgb")


@pytest.mark.parametrize("name", ["cam1", "Door-3", "lobby_ir", "gate.2", "A"])
def test_safe_camera_names(name):
    assert CameraSpec.parse(f"{name}=x.avi:ir").name == name


def test_second_run_into_the_same_out_is_refused_unless_overwrite(scene, tiny_bundle, tmp_path):
    """A second run used to replace events.jsonl / tracks.json silently and leave the first
    run's pictures, matching nothing."""
    out = tmp_path / "run"
    first = _run(tiny_bundle, scene, out)
    assert first.exit_code == 0, first.output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any(p.parts[0] == "rankings" for p in before)
    (out / "rankings" / "cam3_999_0.jpg").write_bytes(b"an old picture")   # matches no event

    again = _run(tiny_bundle, scene, out)
    assert again.exit_code == 2 and "--overwrite" in again.output, again.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == {
        **before, (out / "rankings" / "cam3_999_0.jpg").relative_to(out): b"an old picture"}

    (out / "input.avi").write_bytes(b"a camera's video kept beside the outputs")
    third = _run(tiny_bundle, scene, out, "--overwrite", "--no-video")
    assert third.exit_code == 0, third.output
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    pictures = {p.name for p in (out / "rankings").iterdir()}
    assert pictures == {e["picture"].split("/")[-1] for e in events if "picture" in e}
    assert not (out / "cam1.avi").exists()                 # the old run's videos are gone too
    assert (out / "input.avi").exists()                    # not one of them: left alone


def test_overwrite_never_empties_a_folder_that_is_not_a_run(scene, tiny_bundle, tmp_path):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    res = _run(tiny_bundle, scene, out, "--overwrite")
    assert res.exit_code == 2 and "not the output of an ssft-video run" in res.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_library_refuses_a_non_empty_out(tiny_runtime, tmp_path):
    (tmp_path / "events.jsonl").write_text("{}\n")
    with pytest.raises(outputs.OutputExistsError):
        VideoPipeline(tiny_runtime, [CameraSpec("a", "x", "rgb")], "motion", out=tmp_path,
                      open_fns={"a": lambda: None})
    assert (tmp_path / "events.jsonl").read_text() == "{}\n"
    pipe = VideoPipeline(tiny_runtime, [CameraSpec("a", "x", "rgb")], "motion", out=tmp_path,
                         overwrite=True, open_fns={"a": lambda: _Empty()})
    pipe.run()
    assert (tmp_path / "events.jsonl").read_text() == ""


class _Empty:
    fps = 10.0

    def read(self):
        return None

    def release(self):
        pass


def test_pictures_of_one_track_never_overwrite_each_other(tmp_path):
    out = outputs.RunOutput(tmp_path / "o")
    thumb = np.full((64, 32, 3), 128, np.uint8)
    ev = {"camera": "cam3", "modality": "ir", "track": 4, "start_frame": 10, "matches": []}
    a = out.picture(ev, thumb, [])
    b = out.picture({**ev, "start_frame": 90}, thumb, [])
    c = out.picture(ev, thumb, [])                           # the same span again
    out.close()
    assert len({a, b, c}) == 3 and all((tmp_path / "o" / p).is_file() for p in (a, b, c))
