import json

import pytest
import torch
from fastapi.testclient import TestClient

from capsnet import create_model, load_run
from capsnet.cli import main
from capsnet.data import load_split
from capsnet.errors import ConfigError
from capsnet.tools.explore import create_app, listen, load_explorer

URL = "http://127.0.0.1"
N = 28 * 28


@pytest.fixture(scope="module")
def client(tiny_run) -> TestClient:
    return TestClient(load_explorer(tiny_run), base_url=URL)


@pytest.fixture(scope="module")
def digit(mnist_dir) -> list[float]:
    """A real test digit as the page sends it: 784 floats in [0, 1]."""
    x = load_split("mnist", "test", mnist_dir)[0][0].float() / 255
    return [round(v, 3) for v in x.flatten().tolist()]


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


def test_page_and_its_assets_are_served_with_security_headers(client):
    for path, media, needle in [
        ("/", "text/html", '<canvas id="draw"'),
        ("/app.js", "text/javascript", "/api/predict"),
        ("/style.css", "text/css", "#sliders"),
    ]:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media)
        assert needle in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-content-type-options"] == "nosniff"


def test_nothing_from_the_request_reaches_a_page(client):
    assert client.get("/?text=<script>x</script>").text == client.get("/").text


def test_info_describes_the_model_and_its_dataset(client, mnist_dir):
    info = client.get("/api/info").json()
    assert info["class_names"] == [str(k) for k in range(10)] and info["dataset"] == "mnist"
    assert info["in_channels"] == 1 and info["input_size"] == [28, 28]
    assert info["class_dim"] == 16 and info["primary_types"] == 4
    assert info["primary_grid"] == [6, 6]  # (28 - 9 + 1 - 9) // 2 + 1
    n_test = len(load_split("mnist", "test", mnist_dir)[1])
    assert info["has_decoder"] and info["capsules"] and info["test_images"] == n_test
    assert info["slider"] == {"min": -0.5, "max": 0.5, "step": 0.05, "mark": 0.25}


def test_predict_returns_the_models_outputs_for_the_winner(client, tiny_run, digit):
    p = client.post("/api/predict", json={"pixels": digit}).json()
    model, _ = load_run(tiny_run)
    with torch.no_grad():
        out = model(torch.tensor(digit).view(1, 1, 28, 28))
    k = int(out.scores.argmax())
    assert p["prediction"] == k and p["class_name"] == str(k)
    assert p["scores"] == pytest.approx(out.scores[0].tolist(), abs=1e-6)
    assert p["pose"] == pytest.approx(out.poses[0, k].tolist(), abs=1e-6)
    assert p["reconstruction"] == pytest.approx(out.reconstructions.flatten().tolist(), abs=1e-4)
    # Primary capsule i = (type t, row r, column c) is i = t·36 + r·6 + c.
    c = out.coupling[0, :, k]
    expected = [sum(c[t * 36 + i] for t in range(4)) / 4 for i in range(36)]
    assert p["coupling"] == pytest.approx([float(v) for v in expected], abs=1e-6)


def test_decode_of_the_winning_pose_is_its_reconstruction_and_a_tweak_changes_it(client, digit):
    p = client.post("/api/predict", json={"pixels": digit}).json()
    body = {"class_index": p["prediction"], "pose": p["pose"]}
    same = client.post("/api/decode", json=body).json()["reconstruction"]
    assert same == pytest.approx(p["reconstruction"], abs=1e-3)
    body["pose"] = [v + 0.25 * (d == 0) for d, v in enumerate(p["pose"])]
    tweaked = client.post("/api/decode", json=body).json()["reconstruction"]
    assert max(abs(a - b) for a, b in zip(tweaked, same, strict=True)) > 1e-3


def test_random_returns_a_test_image_with_its_label(client, mnist_dir):
    r = client.get("/api/random").json()
    images, labels = load_split("mnist", "test", mnist_dir)
    assert r["label"] == int(labels[r["index"]]) and r["class_name"] == str(r["label"])
    assert [round(v * 255) for v in r["pixels"]] == images[r["index"]].flatten().tolist()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"pixels": [0.5] * (N - 1)}, "expected 1×28×28 = 784 values"),
        ({"pixels": [1.5] + [0.0] * (N - 1)}, "pixels.0: Input should be less than or equal to 1"),
        ({"pixels": [0.0] * (N - 1) + [-0.1]}, "pixels.783: Input should be greater than"),
        ({"pixels": ["0.5"] * N}, "pixels.0: Input should be a valid number (and 783 more)"),
        ({"pixels": [True] * N}, "valid number"),
        ({"pixels": "all black"}, "pixels: Input should be a valid list"),
        ({"pixels": [0.0] * N, "path": "/etc/passwd"}, "path: Extra inputs are not permitted"),
        ({}, "pixels: Field required"),
    ],
)
def test_invalid_predict_requests_are_422_with_a_one_line_reason(client, body, message):
    assert message in _error(client.post("/api/predict", json=body), 422)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"pixels": [NaN]}', "pixels.0: Input should be a finite number"),
        ('{"pixels": [Infinity]}', "pixels.0: Input should be a finite number"),
        ('{"pixels": [0.5,', "body: invalid JSON at character 16"),
        ("", "body"),
    ],
)
def test_non_finite_and_malformed_json_are_422(client, text, message):
    r = client.post("/api/predict", content=text, headers={"content-type": "application/json"})
    assert message in _error(r, 422)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"class_index": 10, "pose": [0.0] * 16}, "class_index: must be in 0..9"),
        ({"class_index": -1, "pose": [0.0] * 16}, "class_index: must be in 0..9"),
        ({"class_index": "3", "pose": [0.0] * 16}, "class_index: Input should be a valid integer"),
        ({"class_index": 3, "pose": [0.0] * 15}, "pose: expected 16 values"),
        ({"class_index": 3, "pose": [5.0] * 16}, "pose.0: Input should be less than or equal to 2"),
    ],
)
def test_invalid_decode_requests_are_422_with_a_one_line_reason(client, body, message):
    assert message in _error(client.post("/api/decode", json=body), 422)


def test_oversized_bodies_are_413_whether_declared_or_streamed(client):
    big = json.dumps({"pixels": [0.123456789] * 20 * N}).encode()
    assert "request body over" in _error(client.post("/api/predict", content=big), 413)
    chunks = (big[i : i + 4096] for i in range(0, len(big), 4096))  # no Content-Length
    assert "request body over" in _error(client.post("/api/predict", content=chunks), 413)


def test_foreign_host_headers_are_refused(client):
    r = client.get("/api/info", headers={"host": "attacker.example:8000"})
    assert _error(r, 400) == "unexpected Host header"
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200


def test_unknown_routes_and_methods_are_json_errors(client):
    _error(client.get("/etc/passwd"), 404)
    _error(client.get("/api/predict"), 405)


def test_internal_errors_are_json_without_a_traceback(digit):
    model = create_model("capsnet-small", conv1_channels=8, primary_types=2).eval()
    model.forward = lambda *args: 1 / 0
    client = TestClient(create_app(model), base_url=URL, raise_server_exceptions=False)
    assert "internal error" in _error(client.post("/api/predict", json={"pixels": digit}), 500)


def test_without_test_images_or_decoder_those_endpoints_say_so(digit):
    model = create_model("capsnet-small", conv1_channels=8, primary_types=2, reconstruction=False)
    client = TestClient(create_app(model.eval()), base_url=URL)
    assert client.get("/api/info").json()["test_images"] == 0
    assert "no test images" in _error(client.get("/api/random"), 404)
    assert client.post("/api/predict", json={"pixels": digit}).json()["reconstruction"] is None
    body = {"class_index": 0, "pose": [0.0] * 16}
    assert _error(client.post("/api/decode", json=body), 409) == "this model has no decoder"


def test_any_input_shape_channels_and_class_count_work():
    model = create_model(
        "capsnet-small",
        in_channels=3,
        input_size=(32, 24),
        num_classes=5,
        conv1_channels=8,
        primary_types=2,
        class_dim=8,
        decoder_hidden=(16,),
    )
    client = TestClient(create_app(model.eval()), base_url=URL)
    info = client.get("/api/info").json()
    assert info["class_names"] == ["0", "1", "2", "3", "4"] and info["primary_grid"] == [8, 4]
    p = client.post("/api/predict", json={"pixels": [0.5] * (3 * 32 * 24)}).json()
    assert len(p["scores"]) == 5 and len(p["pose"]) == 8 and len(p["coupling"]) == 8 * 4
    assert len(p["reconstruction"]) == 3 * 32 * 24
    body = {"class_index": 4, "pose": [0.1] * 8}
    assert len(client.post("/api/decode", json=body).json()["reconstruction"]) == 3 * 32 * 24


def test_explore_of_a_missing_run_or_a_busy_port_is_a_one_line_error(tmp_path, capsys):
    assert main(["explore", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    with listen("127.0.0.1", 0) as busy, pytest.raises(ConfigError, match="cannot listen"):
        listen("127.0.0.1", busy.getsockname()[1])
