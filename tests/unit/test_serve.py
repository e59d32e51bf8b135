"""The HTTP service over a tiny decoder run: every endpoint, every validation error, a burst."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmrec.recommender import Recommender
from llmrec.serve import MAX_BODY_BYTES, create_app
from tests.fixtures_run import build_decoder_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_decoder_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def loads() -> list[Path]:
    return []


@pytest.fixture(scope="module")
def client(run_dir: Path, loads: list[Path]) -> Iterator[TestClient]:
    def load() -> Recommender:
        loads.append(run_dir)
        return Recommender.load(run_dir, device="cpu")

    with TestClient(create_app(load)) as test_client:
        yield test_client


def test_model_is_loaded_once_at_start_up(client: TestClient, loads: list[Path]):
    client.get("/health")
    client.post("/recommend", json={"user_id": "1"})
    assert len(loads) == 1


def test_health(client: TestClient):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["kind"] == "decoder" and body["catalog_size"] == 50
    assert "/" not in (body["base_model"] or "") and body["method"] == "beam"


def test_items(client: TestClient):
    body = client.get("/items/8").json()
    assert body == {"item_id": "8", "title": "Heat", "display_title": "Heat (1995)",
                    "categories": body["categories"], "attributes": {"year": "1995"}}
    missing = client.get("/items/9999")
    assert missing.status_code == 404 and "item id '9999'" in missing.json()["detail"]
    assert client.get("/items/" + "x" * 65).status_code == 422


def test_recommend_by_user_and_by_history(client: TestClient):
    body = client.post("/recommend", json={"user_id": "2", "k": 5}).json()
    assert body["k_requested"] == 5 and body["k_returned"] == 5 and len(body["items"]) == 5
    assert len({item["item_id"] for item in body["items"]}) == 5
    by_history = client.post("/recommend", json={"history": ["Heat (1995)", "6"], "k": 3, "exclude_seen": True}).json()
    assert {item["item_id"] for item in by_history["items"]}.isdisjoint({"8", "6"})


def test_k_larger_than_rankable_items_is_clamped_and_reported(client: TestClient):
    body = client.post("/recommend", json={"user_id": "1", "k": 100}).json()
    assert body["k_returned"] < 100 and body["warnings"] and "clamped" in body["warnings"][0]


def test_explain_and_tags(client: TestClient):
    body = client.post("/explain", json={"user_id": "1", "item_id": "5"}).json()
    assert body["item_id"] == "5" and body["path"] in ("generated", "template_fallback")
    assert set(body["evidence"]) == {"history_items", "shared_categories", "similarities", "similarity_method"}
    tags = client.post("/tags", json={"history": ["Heat (1995)", "Fargo (1996)"], "k": 2}).json()["tags"]
    assert len(tags) == 2 and all(t["method"] == "category_of_recommended" for t in tags)


@pytest.mark.parametrize(
    ("path", "payload", "status", "fragment"),
    [
        ("/recommend", {"user_id": "1", "history": ["6"]}, 422, "exactly one of"),
        ("/recommend", {}, 422, "exactly one of"),
        ("/recommend", {"user_id": "1", "k": 0}, 422, "greater than or equal to 1"),
        ("/recommend", {"user_id": "1", "k": 101}, 422, "less than or equal to 100"),
        ("/recommend", {"user_id": "1", "k": "ten"}, 422, "valid integer"),
        ("/recommend", {"history": []}, 422, "at least 1 item"),
        ("/recommend", {"history": ["6"] * 201}, 422, "at most 200 items"),
        ("/recommend", {"history": ["x" * 301]}, 422, "at most 300 characters"),
        ("/recommend", {"user_id": "u" * 65}, 422, "at most 64 characters"),
        ("/recommend", {"user_id": "1", "path": "/etc/passwd"}, 422, "Extra inputs are not permitted"),
        ("/recommend", {"user_id": "nobody"}, 404, "user id 'nobody'"),
        ("/recommend", {"history": ["   "]}, 422, "entry 0 is empty"),
        ("/recommend", {"history": ["Qqqq Zzzz Xxxx"]}, 422, "matches no catalog item"),
        ("/explain", {"user_id": "1"}, 422, "item_id"),
        ("/explain", {"user_id": "1", "item_id": "9999"}, 404, "item id '9999'"),
        ("/tags", {"user_id": "1", "k": 51}, 422, "less than or equal to 50"),
        ("/tags", {"user_id": "nobody"}, 404, "user id 'nobody'"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, path: str, payload: dict, status: int, fragment: str):
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    assert fragment in response.text


def test_no_match_lists_closest_candidates(client: TestClient):
    body = client.post("/recommend", json={"history": ["Star Warz Episode Nine"]}).json()
    assert body["candidates"] and {"item_id", "title", "score"} <= set(body["candidates"][0])


def test_malformed_and_oversized_bodies(client: TestClient):
    bad_json = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    big = b'{"history": ["' + b"a" * (MAX_BODY_BYTES + 10) + b'"]}'
    too_large = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert too_large.status_code == 413 and "limit" in too_large.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit applies as the body streams in
        yield b'{"history": ["'
        for _ in range(20):
            yield b"a" * 4096
        yield b'"]}'

    streamed = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.post("/recommend", content=b"{}", headers={"content-length": "abc"}).status_code == 400
    assert client.get("/recommend").status_code == 405


def test_concurrent_burst_is_all_200(client: TestClient):
    payloads = [{"user_id": str(1 + i % 8), "k": 3} if i % 2 else {"history": ["Heat (1995)", str(1 + i % 50)], "k": 3}
                for i in range(50)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda p: client.post("/recommend", json=p).status_code, payloads))
    assert statuses == [200] * 50


def test_openapi_schema(client: TestClient):
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/recommend", "/explain", "/tags", "/health", "/items/{item_id}"} <= set(schema["paths"])
    for path in ("/recommend", "/explain", "/tags"):
        operation = schema["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        assert {"200", "404", "422"} <= set(operation["responses"])
    body = schema["components"]["schemas"]["RecommendBody"]
    assert body["properties"]["k"]["maximum"] == 100 and body["additionalProperties"] is False
    history = body["properties"]["history"]["anyOf"][0]
    assert history["maxItems"] == 200 and history["items"]["maxLength"] == 300
    refs = [value for value in _walk(schema) if isinstance(value, str) and value.startswith("#/components/schemas/")]
    assert all(ref.rsplit("/", 1)[1] in schema["components"]["schemas"] for ref in refs)  # no dangling $ref


def _walk(node: object) -> Iterator[object]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
    else:
        yield node
