"""Pretrained registry, hub resolution, sha256 verification and offline behaviour (never touches the network).

Every test runs with HF_HUB_OFFLINE=1 and a temporary HF_HOME / cache. "Downloads" are a mocked
``huggingface_hub.hf_hub_download`` that copies the shared fixtures into a real Hugging Face cache layout
(``models--owner--repo/{blobs,snapshots,refs}``); the offline-cache tests use the real huggingface_hub code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest

from kontrast.checkpoints import hub
from kontrast.errors import CheckpointError, KontrastError, OfflineError, UnknownModelError

try:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
except ImportError:  # huggingface_hub < 0.23
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

REV = "0123456789abcdef0123456789abcdef01234567"  # a fake commit hash


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _populate(cache: Path, repo_id: str, name: str, src: Path, rev: str = REV) -> Path:
    """Put ``src`` into a Hugging Face cache layout as ``repo_id``'s ``name``; returns the snapshot path."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo_dir / "blobs" / _sha256(src)  # HF names LFS blobs by their sha256 etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        shutil.copyfile(src, blob)
    snap = repo_dir / "snapshots" / rev / name
    snap.parent.mkdir(parents=True, exist_ok=True)
    if not snap.exists():
        os.symlink(os.path.relpath(blob, snap.parent), snap)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(rev)
    return snap


@pytest.fixture(autouse=True)
def offline_env(tmp_path, monkeypatch):
    """No network in any test: offline mode, and HF_HOME / the hub cache inside tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


class FakeHub:
    """A mocked hub: ``repos`` maps repo id -> {file name: local source}; records each call."""

    def __init__(self, repos: dict[str, dict[str, Path]], reachable: bool = True) -> None:
        self.repos = repos
        self.reachable = reachable
        self.calls: list[tuple[str, str, bool]] = []
        self.metadata_calls = 0
        self.etags: dict[str, str] = {}  # file name -> etag override

    def download(self, repo_id, filename, *, cache_dir=None, local_files_only=False, revision=None, **kw):
        self.calls.append((repo_id, filename, local_files_only))
        cache = Path(cache_dir or huggingface_hub.constants.HF_HUB_CACHE)
        if local_files_only or not self.reachable:
            snap = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / REV / filename
            if snap.exists():
                return str(snap)
            raise LocalEntryNotFoundError(f"{filename} not cached")
        src = self.repos[repo_id].get(filename)
        if src is None:
            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        return str(_populate(cache, repo_id, filename, src))

    def metadata(self, url, **kw):
        self.metadata_calls += 1
        name = url.rsplit("/", 1)[-1]
        src = next(r[name] for r in self.repos.values() if name in r)
        return type("Meta", (), {"etag": self.etags.get(name, _sha256(src))})()


@pytest.fixture
def fake_hub(fixtures_dir, monkeypatch):
    """A reachable mocked hub serving the shared fixtures under real repository names."""
    oc, hf = fixtures_dir / "open_clip_vit", fixtures_dir / "hf_vit"
    fake = FakeHub({
        "timm/vit_base_patch32_clip_224.openai": {  # open_clip files + timm's own files, as on the hub
            "open_clip_model.safetensors": oc / "open_clip_model.safetensors",
            "open_clip_config.json": oc / "open_clip_config.json",
            "model.safetensors": hf / "model.safetensors",
        },
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": {  # no open_clip_config.json: must be tolerated
            "open_clip_model.safetensors": oc / "open_clip_model.safetensors",
        },
        "openai/clip-vit-base-patch32": {
            "config.json": hf / "config.json",
            "model.safetensors": hf / "model.safetensors",
        },
    })
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fake.metadata)
    return fake


# ------------------------------------------------------------------------------------------------ registry


def test_registry_covers_the_architectures_and_tags():
    pairs = set(hub.list_pretrained())
    for arch in ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]:
        assert (arch, "openai") in pairs
    assert {("RN50", "yfcc15m"), ("RN50", "cc12m"), ("RN101", "yfcc15m")} <= pairs
    assert {("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-16", "laion2b_s34b_b88k"), ("ViT-L-14", "laion2b_s32b_b82k"),
            ("ViT-L-14", "datacomp_xl_s13b_b90k")} <= pairs
    assert len(pairs) == len(hub.list_pretrained())  # no duplicates


def test_registry_entries_are_well_formed():
    for arch, tag in hub.list_pretrained():
        e = hub.get_pretrained_entry(arch, tag)
        assert e["format"] in ("open_clip", "hf") and e["hf_repo"].count("/") == 1
        assert e["weights"] and isinstance(e["quick_gelu"], bool)
        for sha in (e.get("sha256") or {}).values():
            assert len(sha) == 64
    for e in hub._registry()["hf_repos"]:
        assert e["format"] == "hf" and e["config"] == "config.json"


def test_openai_entries_point_to_timm_repos_with_quickgelu():
    e = hub.get_pretrained_entry("ViT-B-32", "openai")
    assert e["hf_repo"] == "timm/vit_base_patch32_clip_224.openai"
    assert e["weights"] == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert e["config"] == "open_clip_config.json" and e["quick_gelu"] is True
    assert hub.get_pretrained_entry("ViT-L-14", "openai")["hf_repo"] == "timm/vit_large_patch14_clip_224.openai"
    assert hub.get_pretrained_entry("RN50", "openai")["hf_repo"] == "timm/resnet50_clip.openai"
    laion = hub.get_pretrained_entry("ViT-B-32", "laion2b_s34b_b79k")
    assert laion["hf_repo"] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" and laion["quick_gelu"] is False
    assert hub.get_pretrained_entry("ViT-L-14", "laion2b_s32b_b82k")["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("name", ["ViT-B/32", "vit-b-32", "VIT-B-32", " ViT-B/32 "])
def test_architecture_names_match_openai_spelling_and_case(name):
    assert hub.get_pretrained_entry(name, "OpenAI")["architecture"] == "ViT-B-32"
    assert hub.list_pretrained(name) == hub.list_pretrained("ViT-B-32")


def test_openai_336px_spelling_and_quickgelu_alias():
    assert hub.get_pretrained_entry("ViT-L/14@336px", "openai")["architecture"] == "ViT-L-14-336"
    tags = [t for _, t in hub.list_pretrained("ViT-B-32-quickgelu")]
    assert "openai" in tags and "laion2b_s34b_b79k" not in tags
    assert hub.get_pretrained_entry("ViT-B-32-quickgelu", "laion400m-e32")["tag"] == "laion400m_e32"
    assert hub.list_pretrained("no-such-model") == []


def test_unknown_architecture_names_the_nearest_in_one_line():
    with pytest.raises(UnknownModelError) as info:
        hub.get_pretrained_entry("ViT-B-23", "openai")
    msg = str(info.value)
    assert "ViT-B-23" in msg and "ViT-B-32" in msg and "\n" not in msg
    assert isinstance(info.value, KontrastError)


def test_unknown_tag_names_the_nearest_tag_in_one_line():
    with pytest.raises(UnknownModelError) as info:
        hub.get_pretrained_entry("ViT-B-32", "laion2b_s34b_b97k")
    msg = str(info.value)
    assert "nearest: laion2b_s34b_b79k" in msg and "\n" not in msg


def test_hf_repo_entries():
    e = hub.get_hf_repo_entry("openai/clip-vit-base-patch32")
    assert e["format"] == "hf" and e["architecture"] == "ViT-B-32"
    assert hub.get_hf_repo_entry("openai/clip-vit-large-patch14")["architecture"] == "ViT-L-14"
    assert hub.get_hf_repo_entry("timm/vit_base_patch32_clip_224.openai")["tag"] == "openai"
    assert hub.get_hf_repo_entry("someone/else") is None


# ------------------------------------------------------------------------------------------- verification


def test_verify_file_accepts_the_right_sha256_and_rejects_a_wrong_one(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 100)
    hub.verify_file(f, _sha256(f))
    with pytest.raises(CheckpointError) as info:
        hub.verify_file(f, "0" * 64)
    assert str(f) in str(info.value) and "\n" not in str(info.value)
    hub.verify_file(f, None, etag=f'"{_sha256(f)}"')  # quoted etag, as HTTP sends it
    with pytest.raises(CheckpointError):
        hub.verify_file(f, None, etag="f" * 64)
    hub.verify_file(f, None, etag="a" * 40)  # a git (sha1) etag cannot verify: no error
    hub.verify_file(f, None)


def test_verified_marker_skips_rehashing_until_the_file_changes(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    digest = _sha256(f)
    hub.verify_file(f, digest)
    assert json.loads((tmp_path / hub.MARKER_NAME).read_text())["w.bin"]["sha256"] == digest

    hashed = []
    real = hub._sha256_file
    monkeypatch.setattr(hub, "_sha256_file", lambda p: hashed.append(p) or real(p))
    hub.verify_file(f, digest)
    assert hashed == []  # second load: no rehash
    with pytest.raises(CheckpointError):  # known content, other expectation: fails without rehashing
        hub.verify_file(f, "1" * 64)
    assert hashed == []

    f.write_bytes(b"abd" * 1000)  # same size, new content and mtime
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(CheckpointError):
        hub.verify_file(f, digest)
    assert hashed == [f]


# --------------------------------------------------------------------------------------- mocked downloads


def test_resolve_pretrained_downloads_open_clip_files(fake_hub, fixtures_dir, tmp_path):
    folder = hub.resolve_pretrained("ViT-B/32", "openai", cache_dir=tmp_path / "cache")
    assert folder.is_dir() and (folder / "open_clip_config.json").is_file()
    weights = folder / "open_clip_model.safetensors"
    assert _sha256(weights) == _sha256(fixtures_dir / "open_clip_vit" / "open_clip_model.safetensors")
    assert not (folder / "open_clip_pytorch_model.bin").exists()  # safetensors preferred, .bin not fetched
    assert (folder / hub.MARKER_NAME).is_file() and fake_hub.metadata_calls == 1  # verified against the etag

    hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=tmp_path / "cache")
    assert fake_hub.metadata_calls == 1  # already verified: no second metadata request


def test_resolve_pretrained_tolerates_missing_open_clip_config(fake_hub, tmp_path):
    folder = hub.resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path / "cache")
    assert (folder / "open_clip_model.safetensors").is_file()
    assert not (folder / "open_clip_config.json").exists()


def test_resolve_pretrained_checks_the_registry_sha256(fake_hub, tmp_path, monkeypatch, fixtures_dir):
    good = _sha256(fixtures_dir / "open_clip_vit" / "open_clip_model.safetensors")
    entry = hub.get_pretrained_entry("ViT-B-32", "openai")
    for sha, ok in [("e" * 64, False), (good, True)]:
        patched = dict(entry, sha256={"open_clip_model.safetensors": sha})
        monkeypatch.setattr(hub, "get_pretrained_entry", lambda a, t, e=patched: e)
        if ok:
            assert hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=tmp_path / "c").is_dir()
        else:
            with pytest.raises(CheckpointError, match="open_clip_model.safetensors"):
                hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=tmp_path / "c")


def test_resolve_pretrained_rejects_a_file_whose_etag_differs(fake_hub, tmp_path):
    fake_hub.etags["open_clip_model.safetensors"] = "d" * 64
    with pytest.raises(CheckpointError, match="hub etag"):
        hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=tmp_path / "cache")


def test_resolve_hf_hub_prefers_open_clip_files(fake_hub, tmp_path):
    folder = hub.resolve_hf_hub("hf-hub:timm/vit_base_patch32_clip_224.openai", cache_dir=tmp_path / "c")
    assert (folder / "open_clip_model.safetensors").is_file() and (folder / "open_clip_config.json").is_file()
    assert not (folder / "model.safetensors").exists()  # timm's tower-only weights are not fetched


def test_resolve_hf_hub_falls_back_to_clipmodel_files(fake_hub, fixtures_dir, tmp_path):
    folder = hub.resolve_hf_hub("openai/clip-vit-base-patch32", cache_dir=tmp_path / "c")
    assert folder.name == REV and folder.parent.name == "snapshots"
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        (fixtures_dir / "hf_vit" / "config.json").read_text())
    assert _sha256(folder / "model.safetensors") == _sha256(fixtures_dir / "hf_vit" / "model.safetensors")
    assert ("openai/clip-vit-base-patch32", "pytorch_model.bin", False) not in fake_hub.calls


def test_resolve_hf_hub_rejects_malformed_names():
    with pytest.raises(UnknownModelError, match="owner/repository"):
        hub.resolve_hf_hub("hf-hub:just-a-name")


def test_unreachable_hub_falls_back_to_the_cache(fake_hub, tmp_path):
    cache = tmp_path / "cache"
    hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=cache)  # first load, online
    fake_hub.reachable = False  # like huggingface_hub on a connection error: LocalEntryNotFoundError
    folder = hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=cache)
    assert (folder / "open_clip_model.safetensors").is_file()
    with pytest.raises(OfflineError, match="no network"):
        hub.resolve_pretrained("ViT-L-14", "openai", cache_dir=cache)


def test_missing_huggingface_hub_is_a_one_line_kontrast_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(KontrastError, match="needs huggingface_hub: pip install huggingface_hub"):
        hub.resolve_pretrained("ViT-B-32", "openai")


# ----------------------------------------------------------------- offline, real huggingface_hub code path


def test_offline_without_cache_raises_one_line_offline_error(tmp_path):
    with pytest.raises(OfflineError) as info:
        hub.resolve_pretrained("ViT-B-32", "openai", cache_dir=tmp_path / "empty")
    msg = str(info.value)
    assert "\n" not in msg
    assert "ViT-B-32/openai" in msg and "timm/vit_base_patch32_clip_224.openai" in msg
    assert 'kontrast.load("/path/to/open_clip_model.safetensors")' in msg
    with pytest.raises(OfflineError, match="hf-hub:openai/clip-vit-base-patch32"):
        hub.resolve_hf_hub("openai/clip-vit-base-patch32", cache_dir=tmp_path / "empty")


def test_cached_files_resolve_offline_through_huggingface_hub(fixtures_dir, tmp_path):
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)  # the default cache (inside tmp HF_HOME)
    oc = fixtures_dir / "open_clip_vit"
    repo = "timm/vit_base_patch32_clip_224.openai"
    for name in ("open_clip_model.safetensors", "open_clip_config.json"):
        _populate(cache, repo, name, oc / name)
    folder = hub.resolve_pretrained("ViT-B-32", "openai")
    assert folder == cache / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / REV
    assert {p.name for p in folder.iterdir()} >= {"open_clip_model.safetensors", "open_clip_config.json"}
    marker = json.loads((folder / hub.MARKER_NAME).read_text())  # verified offline against the blob name
    assert marker["open_clip_model.safetensors"]["sha256"] == _sha256(oc / "open_clip_model.safetensors")


def test_cached_clipmodel_repo_resolves_offline_and_corruption_is_caught(fixtures_dir, tmp_path):
    cache = tmp_path / "cache"
    hf = fixtures_dir / "hf_vit"
    for name in ("config.json", "model.safetensors"):
        _populate(cache, "openai/clip-vit-base-patch32", name, hf / name)
    folder = hub.resolve_hf_hub("hf-hub:openai/clip-vit-base-patch32", cache_dir=cache)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    blob = (folder / "model.safetensors").resolve()  # truncate the cached blob: a broken download
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        hub.resolve_hf_hub("hf-hub:openai/clip-vit-base-patch32", cache_dir=cache)
