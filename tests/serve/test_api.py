"""The REST API over tiny runs: every request through the pipeline, limits at the edge, errors as one line."""

from __future__ import annotations

import io
import json
import threading
import time
import wave

import numpy as np

from muselab.serve.models import Limits


def _wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 330 * t) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def test_models_list_recipes_schemas_with_ranges_and_training(client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()}
    assert set(models) == {"poems", "digits", "flute", "reverse"}
    poems = models["poems"]
    assert poems["recipe"] == "text-lm" and poems["training"]["step"] > 0 and poems["stream_url"]
    props = poems["controls_schema"]["properties"]
    assert props["max_new_tokens"]["maximum"] == 64  # the server's cap, below the recipe's own
    assert "range: >= 1 and <= 64" in props["max_new_tokens"]["description"]
    assert "policy" not in props and "stream" not in props  # the server decides those
    assert models["flute"]["controls_schema"]["properties"]["wav"]["x-muselab-file"] == "audio"
    assert not any("/" in str(v) for v in poems["data"].values())  # no server paths


def test_text_generation_is_saved_with_manifest_and_fetchable(client) -> None:
    reply = client.post("/v1/models/poems/generate", json={"prompt": "The", "max_new_tokens": 12, "seed": 5})
    assert reply.status_code == 200, reply.text
    gen = reply.json()
    assert gen["seed"] == 5 and gen["content"]["texts"][0].startswith("The") and gen["ai_generated"]
    assert gen["manifest"]["ai_generated"] is True and gen["manifest"]["seed"] == 5
    assert "run_dir" not in gen["manifest"]
    item = next(a for a in gen["artifacts"] if a["role"] == "item")
    fetched = client.get(item["url"])
    assert fetched.status_code == 200 and fetched.text == gen["content"]["texts"][0]
    again = client.post("/v1/models/poems/generate", json={"prompt": "The", "max_new_tokens": 12, "seed": 5}).json()
    assert again["content"]["texts"] == gen["content"]["texts"]  # same seed, same text


def test_text_streams_as_server_sent_events(client) -> None:
    with client.stream("POST", "/v1/models/poems/stream", json={"prompt": "A", "max_new_tokens": 60, "seed": 3}) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        body = s.read().decode()
    events = [block for block in body.split("\n\n") if block]
    texts = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: text")]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert events[-1].startswith("event: done") and len(texts) >= 2
    assert "".join(texts) == done["content"]["texts"][0]


def test_images_sound_and_attention(client) -> None:
    images = client.post("/v1/models/digits/generate", json={"num_samples": 3, "label": "7", "seed": 1}).json()
    assert [a["media_type"] for a in images["artifacts"] if a["role"] == "item"] == ["image/png"] * 3
    png = client.get(images["artifacts"][0]["url"]).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    sound = client.post("/v1/models/flute/generate", json={"notes": "C4:1 E4:1", "tempo": 120, "seed": 2}).json()
    wav = next(a for a in sound["artifacts"] if a["role"] == "item")
    assert wav["media_type"].startswith("audio/") and sound["content"]["seconds"] == [1.0]
    pairs = client.post("/v1/models/reverse/generate", json={"input": ["cat"], "beam": 2}).json()
    attention = pairs["content"]["attention"][0]
    assert attention["input"] == "cat" and len(attention["matrix"]) >= 1


def test_malformed_bodies_get_422_naming_the_field(client) -> None:
    bad = client.post("/v1/models/poems/generate", json={"max_new_tokens": "many"})
    assert bad.status_code == 422 and bad.json()["field"] == "max_new_tokens"
    over = client.post("/v1/models/poems/generate", json={"max_new_tokens": 65})
    assert over.status_code == 422 and over.json()["field"] == "max_new_tokens"
    unknown = client.post("/v1/models/poems/generate", json={"top_q": 0.5})
    assert unknown.status_code == 422 and unknown.json()["field"] == "top_q"
    broken = client.post("/v1/models/poems/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "\n" not in broken.json()["error"]
    # a check only the recipe's own controls model makes still names the control
    notes = client.post("/v1/models/flute/generate", json={"notes": "H9:1"})
    assert notes.status_code == 422 and notes.json()["field"] == "notes"


def test_requests_never_name_paths(client, tmp_path) -> None:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(_wav_bytes(0.5))
    for field, value in (("wav", str(secret)), ("wav", "../../etc/passwd")):
        reply = client.post("/v1/models/flute/generate", json={field: value})
        assert reply.status_code == 422 and reply.json()["field"] == field
    image = client.post("/v1/models/digits/generate", json={"interpolate": ["/etc/passwd", "1"]})
    assert image.status_code == 422
    unknown = client.post("/v1/models/flute/generate", json={"wav": "0" * 24})
    assert unknown.status_code == 422 and "upload" in unknown.json()["error"]


def test_uploaded_recording_is_played_by_artifact_id_and_long_sound_is_refused(client) -> None:
    up = client.post("/v1/uploads", files={"file": ("take.wav", _wav_bytes(0.6), "audio/wav")})
    assert up.status_code == 200, up.text
    played = client.post("/v1/models/flute/generate", json={"wav": up.json()["id"], "seed": 1})
    assert played.status_code == 200, played.text
    assert played.json()["controls"]["wav"] == up.json()["id"]  # the gallery keeps the id, not a path
    assert played.json()["manifest"]["controls"]["wav"] == up.json()["id"]
    long = client.post("/v1/models/flute/generate", json={"notes": "C4:8 D4:8", "tempo": 60})
    assert long.status_code == 422 and long.json()["field"] == "notes" and "4 s" in long.json()["error"]


def test_size_limits_give_413(client) -> None:
    big = client.post("/v1/models/poems/generate", json={"prompt": "x" * 30_000})
    assert big.status_code == 413
    upload = client.post("/v1/detect", files={"file": ("big.wav", b"\0" * 300_000, "audio/wav")})
    assert upload.status_code == 413 and "upload" in upload.json()["error"]


def test_moderation_refusal_is_422_naming_the_category(client) -> None:
    for endpoint in ("generate", "stream"):
        refused = client.post(f"/v1/models/poems/{endpoint}", json={"prompt": "let us watch porn tonight"})
        assert refused.status_code == 422 and refused.json()["category"] == "sexual"
    verdict = client.post("/v1/moderate", json={"text": "watch porn"}).json()
    assert verdict["allowed"] is False and verdict["categories"] == ["sexual"]
    assert "text" not in verdict["matches"][0]  # the words are not echoed


def test_detect_finds_the_manifest_of_an_output(client) -> None:
    gen = client.post("/v1/models/flute/generate", json={"notes": "C4:1", "seed": 1}).json()
    wav = next(a for a in gen["artifacts"] if a["role"] == "item")
    found = client.post("/v1/detect", files={"file": ("x.wav", client.get(wav["url"]).content, "audio/wav")}).json()
    assert found["kind"] == "audio" and found["watermark"] is True and found["manifest"]["ai_generated"]
    junk = client.post("/v1/detect", files={"file": ("x.bin", b"hello", "application/octet-stream")}).json()
    assert junk["kind"] == "other" and junk["watermark"] is False


def test_gallery_filters_pages_remixes_and_deletes(client) -> None:
    made = client.post("/v1/models/digits/generate", json={"num_samples": 2, "seed": 11}).json()
    page = client.get("/v1/gallery", params={"model": "digits", "limit": 1}).json()
    assert page["total"] >= 1 and len(page["items"]) == 1 and page["items"][0]["model"] == "digits"
    assert page["items"][0]["id"] == made["id"]  # newest first
    later = client.get("/v1/gallery", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert later["total"] == 0
    remix = client.post(f"/v1/gallery/{made['id']}/remix").json()
    assert remix["controls"]["num_samples"] == 2 and remix["seed"] != 11 and remix["id"] != made["id"]
    files = [a["url"] for a in made["artifacts"]]
    assert client.delete(f"/v1/gallery/{made['id']}").status_code == 204
    assert client.get(f"/v1/gallery/{made['id']}").status_code == 404
    assert all(client.get(url).status_code == 404 for url in files)
    assert client.delete(f"/v1/gallery/{made['id']}").status_code == 404


def test_health_version_page_and_no_cors(client) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    assert client.get("/v1/version").json()["muselab"]
    page = client.get("/", headers={"Origin": "http://evil.example"})
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in page.headers
    for asset in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text  # nothing from outside


def test_queue_full_gives_429_with_retry_after(serve_runs, tmp_path, make_client) -> None:
    with make_client({"poems": serve_runs["poems"]}, tmp_path, limits=Limits(queue=0, time_limit_s=30)) as c:
        served = c.app.state.server.models["poems"]
        served.admit()  # a generation in progress holds the only place
        try:
            busy = c.post("/v1/models/poems/generate", json={"max_new_tokens": 2})
        finally:
            served.release()
        assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
        assert c.post("/v1/models/poems/generate", json={"max_new_tokens": 2}).status_code == 200


def test_time_limit_stops_generation_and_saves_nothing(serve_runs, tmp_path, make_client) -> None:
    with make_client({"poems": serve_runs["poems"]}, tmp_path, limits=Limits(time_limit_s=0.05, max_tokens=100_000)) as c:
        served = c.app.state.server.models["poems"]
        original = served.run.generate

        def slow(*args, **kwargs):  # the model is tiny: make each step slow enough to pass the limit
            hook = served.run.model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
            try:
                return original(*args, **kwargs)
            finally:
                hook.remove()

        served.run.generate = slow
        started = time.monotonic()
        stopped = c.post("/v1/models/poems/generate", json={"max_new_tokens": 5000, "memorization": "off"})
        assert stopped.status_code == 504 and "limit" in stopped.json()["error"]
        assert time.monotonic() - started < 10
        assert c.get("/v1/gallery").json()["total"] == 0


def test_api_key_is_required_when_set(serve_runs, tmp_path, make_client) -> None:
    with make_client({"poems": serve_runs["poems"]}, tmp_path, api_key="s3cret") as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/health").status_code == 200  # a load balancer's probe needs no key


def test_a_crash_answers_500_without_a_trace(serve_runs, tmp_path, make_client) -> None:
    with make_client({"poems": serve_runs["poems"]}, tmp_path) as c:
        served = c.app.state.server.models["poems"]

        def broken(*args, **kwargs):
            raise RuntimeError("secret internals at /home/someone/file.py line 3")

        served.run.generate = broken
        reply = c.post("/v1/models/poems/generate", json={})
        assert reply.status_code == 500
        assert "secret" not in reply.text and "Traceback" not in reply.text and reply.json()["error"]


def test_openapi_describes_every_field_with_its_range(client) -> None:
    doc = client.get("/openapi.json").json()
    assert "/v1/models/poems/generate" in doc["paths"] and "/v1/models/poems/stream" in doc["paths"]
    undocumented = []
    for name, schema in doc["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if not prop.get("description"):
                undocumented.append(f"{name}.{field}")
    assert undocumented == []
    body = doc["components"]["schemas"]["PoemsRequest"]["properties"]
    assert all("range" in p["description"] or "one of" in p["description"] or "no range" in p["description"]
               or "artifact" in p["description"] for p in body.values())


def test_every_string_control_of_every_recipe_is_classified() -> None:
    # a control that names a file must take an artifact id in a request: a new one has to be listed
    import types
    from typing import Union, get_args, get_origin

    from muselab.core.registry import iter_recipes
    from muselab.serve.models import FILE_CONTROLS, HIDDEN_CONTROLS, MODEL_CONTROLS, TEXT_CONTROLS

    def strings(annotation) -> bool:
        if annotation is str:
            return True
        if get_origin(annotation) in (Union, types.UnionType, list):
            return any(strings(a) for a in get_args(annotation))
        return False

    known = set(FILE_CONTROLS) | set(MODEL_CONTROLS) | HIDDEN_CONTROLS | TEXT_CONTROLS
    loose = [f"{recipe.name}.{name}" for recipe in iter_recipes()
             for name, info in recipe.controls_class.model_fields.items()
             if strings(info.annotation) and name not in known]
    assert loose == []


def test_concurrent_requests_all_complete(client) -> None:
    results: list[int] = []

    def ask() -> None:
        results.append(client.post("/v1/models/poems/generate", json={"max_new_tokens": 4}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4


def test_serve_without_fastapi_says_how_to_get_it(monkeypatch, capsys, serve_runs) -> None:
    import importlib.util

    from muselab import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert cli.main(["serve", str(serve_runs["poems"])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'muselab[serve]'" in err
