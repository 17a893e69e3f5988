"""kontrast serve as a clip-retrieval back end: clip-retrieval 2.45.0's own ``ClipClient`` against a real uvicorn
server on loopback (results equal to ``kontrast search --json``), field validation, deduplication, ``/metadata``,
several named indexes, CORS on and off.

clip-retrieval is installed ``--no-deps`` (.ci/run); its package ``__init__`` imports Flask and more, so
``clip_client.py`` is loaded by file path: it needs only ``requests``. Missing, these tests fail.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import json
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_server import build_small_index
from test_server_live import live_server

import kontrast
from kontrast.errors import KontrastError
from kontrast.search.build import update_index
from kontrast.search.clip_retrieval_api import InlineImages, duplicate_positions, row_metadata
from kontrast.search.query import Searcher, open_searchers
from kontrast.search.server import create_app

LOCAL = "http://127.0.0.1"
MODEL = "default"


def load_clip_client():
    """clip-retrieval's ``clip_client`` module, loaded from its file (the package itself needs Flask & co)."""
    dist = importlib_metadata.distribution("clip-retrieval")  # PackageNotFoundError: not installed -> the test fails
    path = next(Path(str(dist.locate_file(f))) for f in dist.files if f.as_posix().endswith("clip_retrieval/clip_client.py"))
    spec = importlib.util.spec_from_file_location("clip_retrieval_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir):
    """Index "emoji" (16 CSV emoji + 3 shard members + a near-duplicate of the first) and index "more" (4 others)."""
    root = tmp_path_factory.mktemp("clipret")
    folder, rows = build_small_index(root, data_dir / "emoji_sample", MODEL, n=16)
    first = root / "images" / rows[0]["filepath"]
    img = Image.open(first).convert("RGBA")
    img.putpixel((0, 0), (1, 2, 3, 255))  # other bytes, (almost) the same embedding
    dup = root / "images" / "near-duplicate.png"
    img.save(dup)
    with open(root / "dup.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["filepath", "caption"], [str(dup), rows[0]["caption"]]])
    model, preprocess, tokenizer = kontrast.load(MODEL)
    update_index(folder, [str(root / "dup.csv")], model, preprocess, tokenizer, MODEL, workers=0)
    sample = data_dir / "emoji_sample"
    with open(sample / "captions.csv", encoding="utf-8") as f:
        others = list(csv.DictReader(f))[40:44]
    more_csv = root / "more.csv"
    with open(more_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption"])
        for row in others:
            w.writerow([str(sample / row["filepath"]), row["caption"]])
    update_index(root / "more", [str(more_csv)], model, preprocess, tokenizer, MODEL, workers=0)
    searchers = open_searchers([("emoji", str(folder)), ("more", str(root / "more"))])
    return {"root": root, "folder": folder, "rows": rows, "dup": dup, "first": first, "searchers": searchers,
            "more_paths": {str(sample / row["filepath"]) for row in others}}


@pytest.fixture(scope="module")
def client(built):
    with TestClient(create_app(built["searchers"]), base_url=LOCAL) as c:
        yield c


def kontrast_search_json(capsys, *args: str) -> list[dict]:
    from kontrast.cli import main

    capsys.readouterr()
    assert main(["search", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _same(clip: list[dict], ours: list[dict]) -> None:
    assert [r["id"] for r in clip] == [r["id"] for r in ours]
    assert [r["image_path"] for r in clip] == [r["path"] for r in ours]
    assert np.allclose([r["similarity"] for r in clip], [r["score"] for r in ours], atol=1e-6)


def test_clip_client_matches_kontrast_search(built, capsys):
    cc = load_clip_client()
    folder, first = str(built["folder"]), str(built["first"])
    with live_server(create_app(built["searchers"])) as url:
        client = cc.ClipClient(f"{url}/knn-service", indice_name="emoji", num_images=8, deduplicate=False,
                               use_safety_model=True, use_violence_detector=True)
        by_text = client.query(text="a flag of a country")
        _same(by_text, kontrast_search_json(capsys, folder, "a flag of a country", "-k", "8"))
        by_image = client.query(image=first)
        _same(by_image, kontrast_search_json(capsys, folder, "--image", first, "-k", "8"))
        assert by_image[0]["image_path"] == first and by_image[0]["similarity"] > 0.999
        captions = cc.ClipClient(f"{url}/knn-service", indice_name="emoji", num_images=5, deduplicate=False,
                                 modality=cc.Modality.TEXT).query(text="a flag of a country")
        _same(captions, kontrast_search_json(capsys, folder, "a flag of a country", "-k", "5", "--captions"))
        vec = built["searchers"]["emoji"].encode_text(["a flag of a country"])[0]
        by_vec = client.query(embedding_input=vec.tolist())
        _same(by_vec, kontrast_search_json(capsys, folder, "a flag of a country", "-k", "8"))
        hit = by_text[0]
        assert list(hit)[-2:] == ["id", "similarity"]  # clip_back's order: metadata, then id and similarity
        on_disk = [h for h in by_text if Path(h["image_path"]).is_file()]  # the rest are shard members ("x.tar:y")
        assert on_disk and all(base64.b64decode(h["image"]) == Path(h["image_path"]).read_bytes() for h in on_disk)
        assert hit["caption"] == next(r["caption"] for r in kontrast_search_json(capsys, folder, "a flag of a country",
                                                                                 "-k", "1"))
        # the second index, by name
        more = cc.ClipClient(f"{url}/knn-service", indice_name="more", num_images=4, deduplicate=False)
        assert {r["image_path"] for r in more.query(text="a face")} == built["more_paths"]
        # a URL image is refused in one line unless the server allows its host
        refused = client.query(image="http://203.0.113.9/cat.jpg")
        assert "does not fetch image URLs" in refused["detail"]


def test_num_images_carry_metadata_the_rest_ids(client):
    body = {"text": "a flag", "num_images": 3, "num_result_ids": 10, "indice_name": "emoji", "modality": "image"}
    out = client.post("/knn-service", content=json.dumps(body)).json()  # no content type, as ClipClient sends
    assert len(out) == 10
    assert all("caption" in r and "image" in r for r in out[:3])
    assert all(set(r) == {"id", "similarity"} for r in out[3:])
    sims = [r["similarity"] for r in out]
    assert sims == sorted(sims, reverse=True)
    meta = client.post("/metadata", content=json.dumps({"indice_name": "emoji", "ids": [out[5]["id"], 999_999]}))
    assert meta.status_code == 200
    got = meta.json()
    assert got[0]["id"] == out[5]["id"] and got[0]["metadata"]["image_path"] and got[0]["metadata"]["image"]
    assert got[1] == {"id": 999_999, "metadata": {}}


def test_deduplicate_drops_the_near_copy(client, built):
    body = {"image": base64.b64encode(built["first"].read_bytes()).decode(), "num_images": 6, "indice_name": "emoji",
            "modality": "image"}
    plain = client.post("/knn-service", content=json.dumps({**body, "deduplicate": False})).json()
    assert [r["image_path"] for r in plain[:2]] == [str(built["first"]), str(built["dup"])]  # the query, its copy
    deduped = client.post("/knn-service", content=json.dumps({**body, "deduplicate": True})).json()
    assert deduped[0]["image_path"] == str(built["first"])
    assert str(built["dup"]) not in [r["image_path"] for r in deduped]
    kept, order = [r["id"] for r in deduped], [r["id"] for r in plain]
    # the plain answer's order, less the copy (other pictures the model sees as near-copies, cosine >= 0.94, may go too)
    assert kept == [i for i in order if i in set(kept)] and len(kept) >= len(order) // 2


def test_duplicate_positions_connected_components_keep_first():
    e = np.zeros((6, 4), np.float32)
    e[0] = [1, 0, 0, 0]
    e[1] = [0, 1, 0, 0]
    e[2] = [0.97, 0.243, 0, 0]  # close to 0 (0.97) -> dropped
    e[3] = [0.87, 0.49, 0, 0]  # close to 2 (0.94..), not to 0 (0.87): dropped through the chain
    e[4] = [0, 0.5, 0, 0]  # same direction as 1 (not normalised): dropped
    e[5] = [0, 0, 1, 0]
    e = e.copy()
    assert float(e[2] @ e[3] / np.linalg.norm(e[2]) / np.linalg.norm(e[3])) >= 0.94
    assert float(e[0] @ e[3] / np.linalg.norm(e[3])) < 0.94
    assert duplicate_positions(e) == {2, 3, 4}
    assert duplicate_positions(e, block=2) == {2, 3, 4}  # blocks give the same components
    assert duplicate_positions(e[[5, 3, 0]]) == set()  # 3 and 0 are not linked without 2
    assert duplicate_positions(e[:1]) == set()


BAD = [
    (b"not json", 400, "JSON object"),
    (b"[1, 2]", 400, "JSON object, not list"),
    ({"modality": "image", "num_images": 5}, 422, "give one of"),
    ({"text": "a", "image": "aGk=", "num_images": 5}, 422, "only one of"),
    ({"image": "not base64!!", "num_images": 5}, 422, "not valid base64"),
    ({"image": base64.b64encode(b"hello, not a picture").decode(), "num_images": 5}, 415, "not an image"),
    ({"embedding_input": [0.1, 0.2], "num_images": 5}, 422, "has 2 numbers"),
    ({"embedding_input": ["a"] * 3, "num_images": 5}, 422, "list of numbers"),
    ({"text": "a", "indice_name": "laion5B", "num_images": 5}, 404, "unknown indice_name 'laion5B'"),
    ({"text": "a", "num_images": 0}, 422, "'num_images' is 0"),
    ({"text": "a", "num_images": 5000}, 422, "'num_images' is 5000; this server accepts 1..1000"),
    ({"text": "a", "num_images": "5"}, 422, "must be an integer"),
    ({"text": "a", "num_images": 5, "num_result_ids": 10**6}, 422, "num_result_ids"),
    ({"text": "a", "modality": "audio", "num_images": 5}, 422, "'modality'"),
    ({"text": "a", "deduplicate": "yes", "num_images": 5}, 422, "'deduplicate' must be true or false"),
    ({"text": "a", "aesthetic_score": 12, "num_images": 5}, 422, "aesthetic_score"),
    ({"text": "a", "aesthetic_weight": "heavy", "num_images": 5}, 422, "aesthetic_weight"),
    ({"text": 5, "num_images": 5}, 422, "'text' must be a string"),
    ({"text": "x" * 2001, "num_images": 5}, 422, "at most 2000"),
]


@pytest.mark.parametrize("body,status,detail", BAD)
def test_knn_fields_validated(client, body, status, detail):
    r = client.post("/knn-service", content=body if isinstance(body, bytes) else json.dumps(body))
    assert r.status_code == status, r.text
    assert detail in r.json()["detail"] and "\n" not in r.json()["detail"]


def test_front_end_style_fields_accepted(client, built):
    """The front end's body: text/plain, aesthetic fields as strings, empty strings for unused inputs."""
    body = {"text": "a flag", "image": None, "image_url": None, "embedding_input": None, "modality": "image",
            "num_images": 4, "indice_name": "emoji", "num_result_ids": 30, "use_mclip": False, "deduplicate": True,
            "use_safety_model": True, "use_violence_detector": True, "aesthetic_score": "", "aesthetic_weight": "0.5"}
    r = client.post("/knn-service", content=json.dumps(body), headers={"content-type": "text/plain;charset=UTF-8"})
    assert r.status_code == 200 and len(r.json()) >= 4
    r = client.post("/knn-service", json={**body, "aesthetic_score": "9", "text": "", "image_url": "",
                                           "embedding_input": [0.0] * built["searchers"]["emoji"].index.dim})
    assert r.status_code == 200
    bad = client.post("/metadata", content=json.dumps({"indice_name": "emoji", "ids": ["1"]}))
    assert bad.status_code == 422 and "integer ids" in bad.json()["detail"]


def test_indices_list_and_index_parameter(client, built):
    assert client.get("/indices-list").json() == ["emoji", "more"]
    more = client.get("/search", params={"q": "a face", "k": 10, "index": "more"}).json()["results"]
    assert {r["path"] for r in more} == built["more_paths"]
    assert all(r["thumb"].endswith("?index=more") for r in more)
    assert client.get(more[0]["thumb"]).status_code == 200
    default = client.get("/search", params={"q": "a face", "k": 3}).json()["results"]
    assert all(str(built["root"]) in r["path"] and "?" not in r["thumb"] for r in default)
    r = client.get("/search", params={"q": "a face", "index": "nope"})
    assert r.status_code == 404 and "emoji, more" in r.json()["detail"]
    assert client.get("/health", params={"index": "more"}).json()["items"] == 4
    assert client.post("/embed", params={"index": "more"}, data={"text": ["a face"]}).status_code == 200
    assert client.post("/embed", params={"index": "nope"}, data={"text": ["a face"]}).status_code == 404
    png = built["first"].read_bytes()
    r = client.post("/classify", params={"index": "more"}, files={"file": ("q.png", png, "image/png")},
                    data={"labels": "flag,face"})
    assert r.status_code == 200 and len(r.json()["labels"]) == 2


def test_indexes_with_one_model_share_it(built):
    a, b = built["searchers"]["emoji"], built["searchers"]["more"]
    assert a.model is b.model and a._lock is b._lock and a.index is not b.index


def test_index_names_from_the_command_line(built, tmp_path):
    from kontrast.commands.serve import parse_index_args

    folder, more = str(built["folder"]), str(built["root"] / "more")
    assert parse_index_args([folder, f"web={more}"]) == [("idx", folder), ("web", more)]
    with pytest.raises(KontrastError, match=r"two indexes are named 'idx' .* NAME=FOLDER") as exc:
        parse_index_args([folder, f"idx={more}"])
    assert "\n" not in str(exc.value)
    with pytest.raises(KontrastError, match="does not exist"):
        parse_index_args([str(tmp_path / "missing")])
    with pytest.raises(KontrastError, match="must be 1-100"):
        parse_index_args([f"bad name={more}"])


def test_row_metadata_without_a_local_file():
    """Rows imported from clip-retrieval embeddings: url and other columns in ``meta``, maybe no file."""
    row = {"id": 7, "path": "", "sha256": "", "caption": None, "kind": "embeddings",
           "meta": {"url": "https://example.org/a.jpg", "caption": "a cat", "NSFW": "UNLIKELY", "similarity": 3}}
    assert row_metadata(row, None) == {"caption": "a cat", "url": "https://example.org/a.jpg", "NSFW": "UNLIKELY",
                                       "similarity": 3}
    from kontrast.search.media import MediaReader

    gone = {**row, "path": "/nonexistent/a.jpg", "sha256": "0" * 64, "kind": "csv", "origin": "x.csv"}
    out = row_metadata(gone, InlineImages(MediaReader()))
    assert "image" not in out and out["image_path"] == "/nonexistent/a.jpg"


def test_cors_off_by_default_and_on_with_guards(built):
    origin = "http://front.example:1235"
    with TestClient(create_app(built["searchers"]), base_url=LOCAL) as c:
        r = c.get("/indices-list", headers={"Origin": origin})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = c.options("/knn-service", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers
    token = "t" * 24
    app = create_app(built["searchers"], cors_origins=(origin,), auth_token=token)
    with TestClient(app, base_url=LOCAL) as c:
        pre = c.options("/knn-service", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "content-type, authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        other = c.options("/knn-service", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        no_token = c.get("/indices-list", headers={"Origin": origin})
        assert no_token.status_code == 401 and no_token.headers["access-control-allow-origin"] == origin
        ok = c.get("/indices-list", headers={"Origin": origin, "Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
        bad_host = c.get("/indices-list", headers={"Origin": origin, "Authorization": f"Bearer {token}",
                                                   "Host": "rebind.example"})
        assert bad_host.status_code == 400 and "DNS rebinding" in bad_host.json()["detail"]


def test_cors_origin_flag_checked():
    from kontrast.commands.serve import check_origin

    assert check_origin("http://localhost:1235/") == "http://localhost:1235"
    for bad in ("localhost:1235", "http://x.org/path", "ftp://x.org"):
        with pytest.raises(KontrastError, match="--cors-origin"):
            check_origin(bad)


def test_single_searcher_app_is_named_after_its_folder(built):
    s = built["searchers"]["more"]
    with TestClient(create_app(Searcher.with_index(s, s.index)), base_url=LOCAL) as c:
        assert c.get("/indices-list").json() == ["more"]


def test_serve_cli_wires_named_indexes_and_flags(built, monkeypatch, capsys):
    """``kontrast serve A NAME=B --cors-origin O --allow-image-urls H --clip-front`` (uvicorn's run replaced)."""
    import uvicorn

    from kontrast.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.update(app=self.config.app))
    folder, more = str(built["folder"]), str(built["root"] / "more")
    assert main(["serve", folder, f"web={more}", "--port", "0", "--cors-origin", "http://localhost:1235",
                 "--allow-image-urls", "a.org,b.org", "--clip-front"]) == 0
    app = seen["app"]
    assert list(app.state.searchers) == ["idx", "web"] and app.state.options.image_url_hosts == ("a.org", "b.org")
    assert app.state.searchers["idx"].model is app.state.searchers["web"].model
    assert "clip-retrieval front end at http://127.0.0.1:" in capsys.readouterr().out
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/indices-list").json() == ["idx", "web"]
        r = c.get("/indices-list", headers={"Origin": "http://localhost:1235"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:1235"
        assert c.get("/clip-front/config.json").json()["defaultIndex"] == "idx"
    assert main(["serve", folder, f"idx={more}", "--port", "0"]) == 2
    assert "two indexes are named 'idx'" in capsys.readouterr().err


def test_duplicate_positions_scale_and_chains():
    """3000 near-identical results (4.5 M linked pairs) in well under the request time; a long chain resolves."""
    import time

    rng = np.random.default_rng(0)
    base = rng.standard_normal(64).astype(np.float32)
    same = base + 0.01 * rng.standard_normal((3000, 64)).astype(np.float32)  # [3000, 64]
    t = time.perf_counter()
    assert duplicate_positions(same) == set(range(1, 3000))
    assert time.perf_counter() - t < 20
    angles = np.arange(50) * 0.3  # neighbours at cos(0.3) = 0.955, two apart at cos(0.6) = 0.83: a chain
    chain = np.stack([np.cos(angles), np.sin(angles)], axis=1)[::-1].copy()  # [50, 2], the chain reversed
    assert duplicate_positions(chain) == set(range(1, 50))
    order = rng.permutation(50)
    assert duplicate_positions(chain[order]) == set(range(1, 50))


def test_duplicate_positions_equal_a_pairwise_reference():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((12, 16)).astype(np.float32)
    e = centres[rng.integers(0, 12, 300)] + 0.22 * rng.standard_normal((300, 16)).astype(np.float32)  # [300, 16]
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    parent = list(range(300))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(300):
        for j in range(i + 1, 300):
            if unit[i] @ unit[j] >= 0.94:
                a, b = root(i), root(j)
                parent[max(a, b)] = min(a, b)
    expected = {i for i in range(300) if root(i) != i}
    assert 30 < len(expected) < 290  # the data has both duplicates and singletons
    assert duplicate_positions(e) == expected
    assert duplicate_positions(e, block=7) == expected


def test_large_files_inlined_as_pictures(built):
    """Files above the inline limit come back as a re-encoded picture of at most 512 pixels a side."""
    import io

    with TestClient(create_app(built["searchers"], knn_inline_max_bytes=100), base_url=LOCAL) as c:
        out = c.post("/knn-service", content=json.dumps({"text": "a flag", "num_images": 8})).json()
    on_disk = [hit for hit in out if Path(hit["image_path"]).is_file()]  # the rest are shard members ("x.tar:y")
    assert len(on_disk) >= 2
    for hit in on_disk:
        data = base64.b64decode(hit["image"])
        original = Image.open(hit["image_path"])
        assert data != Path(hit["image_path"]).read_bytes()
        assert Image.open(io.BytesIO(data)).size == original.size and max(original.size) <= 512
