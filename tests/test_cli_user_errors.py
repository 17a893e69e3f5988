"""Careless inputs to the command line get one line and exit status 2, never a traceback (issue 12 item 9),
and long jobs show progress (item 10). The serve, index and CSV cases live with their commands' tests
(test_server_hardening.py, test_search_hardening.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from kontrast import zeroshot as zs
from kontrast.cli import main


def _state_dict(fixtures_dir):
    from kontrast.checkpoints import formats

    return formats.read(fixtures_dir / "openai_vit.pt").state_dict


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _random_tensors(path):
    save_file({"foo": torch.randn(3, 4), "bar": torch.zeros(2)}, str(path))


def _hf_folder_bad_json(path):
    path.mkdir()
    (path / "config.json").write_text("{not json")
    save_file({"foo": torch.randn(3)}, str(path / "model.safetensors"))


def _open_clip_config_list(path):
    path.mkdir()
    (path / "open_clip_config.json").write_text("[1, 2, 3]")
    save_file({"foo": torch.randn(3)}, str(path / "open_clip_model.safetensors"))


def _kontrast_config_list(path):
    path.mkdir()
    (path / "kontrast_config.json").write_text('"a string"')
    save_file({"foo": torch.randn(3)}, str(path / "kontrast_model.safetensors"))


CASES = {
    "random.safetensors": _random_bytes,  # not even a safetensors header
    "tensors.safetensors": _random_tensors,  # a valid file of tensors that are not a CLIP
    "hf_bad_json": _hf_folder_bad_json,
    "open_clip_list": _open_clip_config_list,
    "kontrast_not_object": _kontrast_config_list,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_info_on_broken_checkpoints_is_one_line(tmp_path, name, capsys):
    path = tmp_path / name
    CASES[name](path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kontrast info: error: ") and err.count("\n") == 0 and str(path) in err


def test_info_on_a_state_dict_with_wrong_shapes(tmp_path, fixtures_dir, capsys):
    sd = {**_state_dict(fixtures_dir), "text_projection": torch.randn(5)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    assert main(["info", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "shapes do not fit" in err


def test_classify_many_labels_shows_progress(tmp_path, fixtures_dir, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    zs.clear_memory_cache()
    image = data_dir / "emoji_sample" / "google_0035-20e3.png"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing number {i}" for i in range(300)))
    args = ["classify", str(image), "--labels-file", str(labels), "--templates", "simple", "--json",
            "--model", str(fixtures_dir / "openai_vit.pt")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    n_prompts = 300 * len(zs.load_templates("simple"))
    assert "embedding label prompts" in err and f"{n_prompts}/{n_prompts}" in err
    assert len(json.loads(out.splitlines()[0])["labels"]) == 5
    assert main(args) == 0  # cached now: no bar
    assert "embedding label prompts" not in capsys.readouterr().err
    zs.clear_memory_cache()
    assert main([*args, "--no-cache", "--no-progress"]) == 0
    assert "embedding label prompts" not in capsys.readouterr().err


class _Payload:
    """Unpickling this runs ``os.system``: what a crafted checkpoint would do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_load_never_runs_code_from_a_pickle(tmp_path, fixtures_dir, capsys):
    """README, Security: state dicts (.pt/.bin, HF pytorch_model.bin) are read with weights_only=True."""
    import kontrast
    from kontrast.errors import CheckpointError

    marker = tmp_path / "pwned"
    sd = dict(_state_dict(fixtures_dir))
    bare = tmp_path / "model.pt"
    torch.save({**sd, "payload": _Payload(marker)}, bare)
    nested = tmp_path / "nested.bin"
    torch.save({"state_dict": sd, "epoch": _Payload(marker)}, nested)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "clip"}))
    torch.save({"payload": _Payload(marker)}, hf / "pytorch_model.bin")
    for path in (bare, nested, hf):
        with pytest.raises(CheckpointError):
            kontrast.load(str(path))
        assert main(["info", str(path)]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert not marker.exists()
