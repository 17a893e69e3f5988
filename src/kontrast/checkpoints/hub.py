"""Pretrained registry and Hugging Face hub downloads: a name becomes a local folder.

What this module does
    ``pretrained_registry.json`` (next to this file) maps ``(architecture, tag)`` pairs such as
    ``("ViT-B-32", "openai")`` or ``("ViT-B-32", "laion2b_s34b_b79k")`` to a Hugging Face hub repository,
    the weight files to look for there (in order of preference), an optional config file, and whether the
    weights need QuickGELU. It also lists Hugging Face ``CLIPModel`` repositories (``openai/clip-vit-*``).
    Architecture names match case-insensitively, with OpenAI's spelling accepted (``ViT-B/32``,
    ``ViT-L/14@336px``) and an optional ``-quickgelu`` suffix; tags match case-insensitively with ``-`` = ``_``.

Contract with the loader (``kontrast.checkpoints`` / ``kontrast.api``)
    ``resolve_pretrained(arch, tag)`` and ``resolve_hf_hub(repo_id)`` return the *folder* holding the
    downloaded files (a Hugging Face cache snapshot folder, or ``cache_dir``'s). The loader then reads it:

    - open_clip layout: ``open_clip_model.safetensors`` (preferred) or ``open_clip_pytorch_model.bin``, plus
      ``open_clip_config.json`` when the repository has one. Without that config, the loader builds the
      architecture it asked for and takes ``quick_gelu`` (and ``mean``/``std`` if present) from
      ``get_pretrained_entry(arch, tag)``.
    - Hugging Face layout: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

    A folder may hold both layouts (timm/... repositories also carry a timm image-tower ``model.safetensors``
    and ``config.json``): when any ``open_clip_*`` weight file is present the loader must read that one.

Downloads and checks
    Files come from ``huggingface_hub.hf_hub_download`` into Hugging Face's cache (``HF_HOME`` /
    ``HF_HUB_CACHE``) or ``cache_dir``. Each weight file is checked with sha256: against the registry's value
    when known, else against the hub's LFS etag (``get_hf_file_metadata``; LFS etags are sha256 digests),
    else, offline, against the cache blob's name (Hugging Face names blobs by etag). A verified file is
    recorded in a ``.kontrast_verified`` marker next to it, keyed by size and mtime, so loading it again does
    not hash it again. Cached files are used without network (``HF_HUB_OFFLINE=1`` or no connection); a file
    that is neither cached nor downloadable raises ``OfflineError`` telling the user to pass a local path.
    ``huggingface_hub`` is imported only when a download is needed.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from kontrast import families
from kontrast.errors import CheckpointError, KontrastError, OfflineError, UnknownModelError

logger = logging.getLogger(__name__)

REGISTRY_FILE = Path(__file__).with_name("pretrained_registry.json")
MARKER_NAME = ".kontrast_verified"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_CONFIG = "config.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 8 << 20  # bytes read per hashing step


# ----------------------------------------------------------------------------------------------- registry


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    """The parsed registry file, read once on first use (never at import)."""
    with open(REGISTRY_FILE, encoding="utf-8") as f:
        return json.load(f)


def _norm_arch(name: str) -> str:
    """Canonical lookup key of an architecture name: ``ViT-B/32`` -> ``vit-b-32``, ``@336px`` -> ``-336``."""
    key = name.strip().replace("/", "-").replace("_", "-").lower()
    return re.sub(r"@(\d+)px$", r"-\1", key)


def _norm_tag(tag: str) -> str:
    """Canonical lookup key of a pretrained tag (open_clip's rule: lower case, ``-`` -> ``_``)."""
    return tag.strip().lower().replace("-", "_")


def _split_quickgelu(architecture: str) -> tuple[str, bool]:
    """``ViT-B-32-quickgelu`` -> (``vit-b-32``, True): open_clip lists QuickGELU tags under that alias."""
    key = _norm_arch(architecture)
    if key.endswith("-quickgelu"):
        return key[: -len("-quickgelu")], True
    return key, False


def _architectures() -> dict[str, str]:
    """Lookup key -> canonical architecture name, in registry order."""
    return {_norm_arch(e["architecture"]): e["architecture"] for e in _registry()["pretrained"]}


def list_pretrained(architecture: str | None = None) -> list[tuple[str, str]]:
    """All ``(architecture, tag)`` pairs in the registry, or those of one architecture (empty if unknown).

    ``architecture`` may carry the ``-quickgelu`` suffix, which keeps only tags trained with QuickGELU.
    """
    entries = _registry()["pretrained"]
    if architecture is None:
        return [(e["architecture"], e["tag"]) for e in entries]
    key, quickgelu_only = _split_quickgelu(architecture)
    return [
        (e["architecture"], e["tag"])
        for e in entries
        if _norm_arch(e["architecture"]) == key and (e["quick_gelu"] or not quickgelu_only)
    ]


class PretrainedTag(NamedTuple):
    """One (architecture, tag) pair of the registry, with its family and whether kontrast loads it."""

    architecture: str
    tag: str
    family: str
    supported: bool


def pretrained_tags(family: str | None = None) -> list[PretrainedTag]:
    """Every pair open_clip 3.3 lists, in its order: the registry's entries, then open_clip's ``-quickgelu``
    aliases (one per entry trained with QuickGELU). ``family`` keeps one family (case-insensitive)."""
    entries = _registry()["pretrained"]
    rows = [(e["architecture"], e) for e in entries]
    rows += [(e["architecture"] + "-quickgelu", e) for e in entries if e["quick_gelu"]]
    wanted = None if family is None else family.strip().lower()
    return [
        PretrainedTag(arch, e["tag"], e["family"], families.is_supported(e["family"]))
        for arch, e in rows
        if wanted is None or e["family"].lower() == wanted
    ]


def get_pretrained_entry(architecture: str, tag: str) -> dict[str, Any]:
    """The registry entry (a copy) for ``architecture`` / ``tag``.

    Raises ``UnknownModelError`` naming the closest known architectures or tags when there is no such entry.
    """
    key, quickgelu_only = _split_quickgelu(architecture)
    archs = _architectures()
    if key not in archs:
        near = difflib.get_close_matches(key, list(archs), n=3, cutoff=0.5)
        hint = f"nearest: {', '.join(archs[k] for k in near)}" if near else f"known: {', '.join(archs.values())}"
        raise UnknownModelError(f"unknown pretrained architecture {architecture!r}; {hint}")
    tags = {_norm_tag(t): t for _, t in list_pretrained(archs[key] + ("-quickgelu" if quickgelu_only else ""))}
    wanted = _norm_tag(tag)
    if wanted not in tags:
        near = difflib.get_close_matches(wanted, list(tags), n=3, cutoff=0.5)
        nearest = f"nearest: {', '.join(near)}; " if near else ""
        raise UnknownModelError(
            f"unknown pretrained tag {tag!r} for {architecture}; {nearest}known tags: {', '.join(tags.values())}"
        )
    for e in _registry()["pretrained"]:
        if _norm_arch(e["architecture"]) == key and _norm_tag(e["tag"]) == wanted:
            return json.loads(json.dumps(e))  # deep copy: callers may not edit the registry
    raise AssertionError("unreachable")  # pragma: no cover


def family_of_architecture(architecture: str) -> str | None:
    """The family the registry gives an architecture name (``-quickgelu`` accepted), or None if it has none."""
    key, _ = _split_quickgelu(architecture)
    for e in _registry()["pretrained"]:
        if _norm_arch(e["architecture"]) == key:
            return e["family"]
    return None


def get_hf_repo_entry(repo_id: str) -> dict[str, Any] | None:
    """The registry's entry for a hub repository (a ``hf_repos`` or ``pretrained`` one), or None."""
    wanted = repo_id.strip().strip("/").lower()
    reg = _registry()
    for e in reg["hf_repos"] + reg["pretrained"]:
        if e["hf_repo"].lower() == wanted:
            return json.loads(json.dumps(e))
    return None


# -------------------------------------------------------------------------------------------- verification


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.parent / MARKER_NAME


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The marker record for ``path`` if it still describes the file (same size and mtime), else None."""
    try:
        record = json.loads(_marker_path(path).read_text(encoding="utf-8")).get(path.name)
        st = os.stat(path)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    return record if _SHA256_RE.match(str(record.get("sha256", ""))) else None


def _write_marker(path: Path, sha256: str) -> None:
    """Record that ``path`` (at its current size and mtime) was verified; a read-only cache is fine."""
    marker = _marker_path(path)
    try:
        data = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
        if not isinstance(data, dict):
            data = {}
        st = os.stat(path)
        data[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        tmp = marker.with_name(f"{MARKER_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, marker)
    except (OSError, ValueError) as e:
        logger.debug("could not write %s: %s", marker, e)


def verify_file(path: str | os.PathLike, expected_sha256: str | None, etag: str | None = None) -> None:
    """Check a file's sha256 against ``expected_sha256``, else against ``etag`` when it is a sha256.

    Does nothing when neither gives a sha256 (a git etag of a small file is a sha1 and is ignored).
    A file verified before, unchanged since (same size and mtime), is not hashed again.
    Raises ``CheckpointError`` naming the file when the content does not match.
    """
    path = Path(path)
    expected, source = (expected_sha256, "registry")
    if not expected:
        expected, source = (etag, "Hugging Face hub etag")
    expected = (expected or "").strip().strip('"').lower()
    if not _SHA256_RE.match(expected):
        logger.debug("no sha256 known for %s; not verified", path)
        return
    record = _read_marker(path)
    actual = record["sha256"] if record else _sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or incomplete: sha256 {actual[:16]}... does not match "
            f"{expected[:16]}... ({source}); delete it and download it again"
        )
    if record is None:
        _write_marker(path, actual)
        logger.info("verified sha256 of %s", path)


# -------------------------------------------------------------------------------------------------- hub


def _import_hub() -> Any:
    """huggingface_hub, imported on demand; it is an optional dependency (``kontrast[hub]``)."""
    try:
        import huggingface_hub
    except ImportError:
        raise KontrastError(
            "downloading pretrained weights needs huggingface_hub: pip install huggingface_hub, "
            "or pass a local checkpoint path"
        ) from None
    return huggingface_hub


def _hub_errors(hf: Any) -> Any:
    """The module holding huggingface_hub's exception classes (``errors`` in new versions, ``utils`` before)."""
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.23
        return hf.utils
    return errors


def _env_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at its import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


class _Session:
    """One resolution against one repository: downloads files, remembers whether the hub is unreachable."""

    def __init__(self, repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> None:
        self.hf = _import_hub()
        self.err = _hub_errors(self.hf)
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        constants = importlib.import_module("huggingface_hub.constants")
        self.offline = _env_offline() or bool(getattr(constants, "HF_HUB_OFFLINE", False))
        self.network_failed = False  # True once the hub could not be reached: use only the cache from then on

    @property
    def local_only(self) -> bool:
        return self.offline or self.network_failed

    def fetch(self, filename: str) -> Path | None:
        """Local path of ``filename`` (downloaded if needed), or None when the repo lacks it / it is not cached.

        Raises ``KontrastError`` when the repository or revision does not exist or is gated.
        """
        from kontrast import __version__

        err = self.err
        while True:
            local_only = self.local_only
            try:
                path = self.hf.hf_hub_download(
                    self.repo_id,
                    filename,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                    local_files_only=local_only,
                    library_name="kontrast",
                    library_version=__version__,
                )
                return Path(path)
            except err.LocalEntryNotFoundError:
                if local_only:
                    return None
                self.network_failed = True  # no connection: look in the cache instead
                logger.info("Hugging Face hub unreachable; looking for %s/%s in the cache", self.repo_id, filename)
            except err.GatedRepoError:
                raise KontrastError(
                    f"Hugging Face hub repository {self.repo_id} is gated: accept its terms on huggingface.co "
                    "and log in (hf auth login), or pass a local checkpoint path"
                ) from None
            except err.RepositoryNotFoundError:
                raise KontrastError(
                    f"Hugging Face hub repository {self.repo_id} not found (private repositories need "
                    "hf auth login); check the name or pass a local checkpoint path"
                ) from None
            except err.RevisionNotFoundError:
                raise KontrastError(
                    f"revision {self.revision!r} not found in Hugging Face hub repository {self.repo_id}"
                ) from None
            except err.EntryNotFoundError:
                return None  # the repository (at this revision) has no such file
            except (OSError, ConnectionError) as e:  # server errors, proxies, older clients' raw network errors
                if local_only:
                    raise
                self.network_failed = True
                logger.info("Hugging Face hub error (%s); looking for %s in the cache", type(e).__name__, filename)

    def fetch_first(self, filenames: list[str] | tuple[str, ...]) -> Path | None:
        """The first of ``filenames`` the repository has (or, offline, the cache holds)."""
        for name in filenames:
            path = self.fetch(name)
            if path is not None:
                return path
        return None

    def remote_sha256(self, filename: str) -> str | None:
        """The hub's LFS etag (= sha256) of ``filename``, or None when unknown or unreachable."""
        if self.local_only:
            return None
        try:
            url = self.hf.hf_hub_url(self.repo_id, filename, revision=self.revision)
            etag = self.hf.get_hf_file_metadata(url).etag
        except Exception as e:  # noqa: BLE001 (best effort: any hub failure falls back to the cache blob name)
            logger.debug("no hub metadata for %s/%s: %s", self.repo_id, filename, e)
            return None
        etag = (etag or "").strip().strip('"').lower()
        if etag.startswith("w/"):
            etag = etag[2:].strip('"')
        return etag if _SHA256_RE.match(etag) else None

    def verify(self, path: Path, expected_sha256: str | None) -> None:
        """Verify a downloaded file (registry sha256, else hub etag, else cache blob name)."""
        if expected_sha256:
            verify_file(path, expected_sha256)
            return
        if _read_marker(path) is not None:
            return  # verified on an earlier load and unchanged since
        etag = self.remote_sha256(path.name) or _blob_sha256(path)
        verify_file(path, None, etag=etag)


def _blob_sha256(path: Path) -> str | None:
    """The sha256 a Hugging Face cache blob is named after (its LFS etag), if ``path`` resolves to one."""
    try:
        real = path.resolve()
    except OSError:
        return None
    if real.parent.name == "blobs" and _SHA256_RE.match(real.name):
        return real.name
    return None


def _offline_error(what: str, repo_id: str, session: _Session, example: str) -> OfflineError:
    reason = "offline (HF_HUB_OFFLINE is set) and not in the cache" if session.offline else "no network"
    return OfflineError(
        f"cannot download {what} from the Hugging Face hub ({repo_id}): {reason}. "
        f'Download it elsewhere and pass the local path: kontrast.load("{example}")'
    )


def resolve_pretrained(architecture: str, tag: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local folder holding the weights (and config, if the repository has one) of a registry entry.

    Downloads into Hugging Face's cache (or ``cache_dir``) when needed and verifies the weights' sha256.
    Raises ``UnknownModelError`` for names not in the registry, ``KontrastError`` naming the family for a
    family kontrast does not implement (before any download), ``OfflineError`` when the files are neither
    cached nor downloadable, ``CheckpointError`` for a corrupt file or a repository without the files.
    """
    entry = get_pretrained_entry(architecture, tag)
    repo_id = entry["hf_repo"]
    what = f"{entry['architecture']}/{entry['tag']}"
    families.require_supported(entry["family"], f"{architecture} (pretrained={tag!r})")
    session = _Session(repo_id, entry.get("revision"), cache_dir)
    weights = session.fetch_first(entry["weights"])
    if weights is None:
        if session.local_only:
            raise _offline_error(what, repo_id, session, f"/path/to/{entry['weights'][0]}")
        raise CheckpointError(
            f"Hugging Face hub repository {repo_id} ({what}) has none of {', '.join(entry['weights'])}; "
            "pass a local checkpoint path"
        )
    session.verify(weights, (entry.get("sha256") or {}).get(weights.name))
    if entry.get("config"):
        config = session.fetch(entry["config"])
        if config is None:
            logger.info("%s has no %s; using the registry's architecture %s", repo_id, entry["config"], what)
        elif config.parent != weights.parent:  # pragma: no cover - same snapshot unless the hub moved on
            logger.warning("%s: config and weights come from different snapshots", repo_id)
    return weights.parent


def resolve_hf_hub(
    repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Snapshot folder for an ``hf-hub:owner/repo`` name: open_clip files first, else ``CLIPModel`` files.

    open_clip layout: ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (+ the optional
    ``open_clip_config.json``). Hugging Face layout: ``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``. Raises ``OfflineError`` when nothing usable is cached and the hub is unreachable.
    """
    repo_id = repo_id.strip()
    repo_id = repo_id.removeprefix("hf-hub:")
    repo_id = repo_id.strip("/")
    if repo_id.count("/") != 1:
        raise UnknownModelError(f"invalid Hugging Face hub name {repo_id!r}: expected hf-hub:owner/repository")
    entry = get_hf_repo_entry(repo_id) or {}
    if entry.get("family"):
        families.require_supported(entry["family"], f"hf-hub:{repo_id}")
    known_sha = entry.get("sha256") or {}
    session = _Session(repo_id, revision, cache_dir)

    if entry.get("format", "open_clip") == "open_clip":
        weights = session.fetch_first(OPEN_CLIP_WEIGHTS)
        if weights is not None:
            session.verify(weights, known_sha.get(weights.name))
            if session.fetch(OPEN_CLIP_CONFIG) is None:
                logger.info("%s has no %s; the loader infers the architecture", repo_id, OPEN_CLIP_CONFIG)
            return weights.parent

    weights = session.fetch_first(HF_WEIGHTS)
    if weights is not None:
        session.verify(weights, known_sha.get(weights.name))
        if session.fetch(HF_CONFIG) is None:
            raise CheckpointError(
                f"Hugging Face hub repository {repo_id} has {weights.name} but no {HF_CONFIG}; "
                "pass a local checkpoint path"
            )
        return weights.parent

    if session.local_only:
        raise _offline_error(f"hf-hub:{repo_id}", repo_id, session, "/path/to/folder")
    raise CheckpointError(
        f"Hugging Face hub repository {repo_id} has no CLIP weights (looked for "
        f"{', '.join(OPEN_CLIP_WEIGHTS + HF_WEIGHTS)}); pass a local checkpoint path"
    )
