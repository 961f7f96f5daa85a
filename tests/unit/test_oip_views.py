"""The Open Inference Protocol routes with a fake model tier: health, metadata, infer, errors, fan-out."""

from __future__ import annotations

import base64
import struct
import threading

import pytest

from services.protocol import Status
from services.web.model_client import ModelUnavailable
from services.web.tiers import admission
from services.web.views import ADMITTED, DOOR

INFER = "/v2/models/fake_net/infer"
pytestmark = pytest.mark.usefixtures("tiers")  # admission limits start fresh in every test


def _body(*images: bytes, k: int | None = None) -> dict:
    body: dict = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images), 1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(image).decode() for image in images],
            }
        ],
    }
    if k is not None:
        body["outputs"] = [{"name": "probabilities", "parameters": {"classification": k}}]
    return body


def test_server_health_and_metadata(client):
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}
    server = client.get("/v2").get_json()
    assert server["name"] == "zerolens"
    assert set(server["extensions"]) == {"binary_tensor_data", "classification"}


def test_model_metadata_and_readiness_by_name_and_version(client):
    metadata = client.get("/v2/models/fake_net").get_json()
    assert metadata["name"] == "fake_net"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    assert client.get("/v2/models/fake_net/versions/1").status_code == 200
    assert client.get("/v2/models/fake_net/ready").get_json() == {"name": "fake_net", "ready": True}
    assert client.get("/v2/models/fake_net/versions/1/ready").status_code == 200
    unknown = client.get("/v2/models/resnet50")
    assert unknown.status_code == 404
    assert unknown.get_json() == {"error": "unknown model 'resnet50': this server serves 'fake_net'"}
    assert client.get("/v2/models/fake_net/versions/2").status_code == 404


def test_not_ready_when_no_model_server_answers(client, fake_model):
    fake_model.raises = ModelUnavailable("no model server reachable at 127.0.0.1:1")
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503
    assert ready.get_json()["ready"] is False
    assert client.get("/v2/models/fake_net/ready").status_code == 503
    assert client.get("/v2/health/live").status_code == 200


def test_errors_are_oip_error_objects(client):
    missing = client.get("/v2/nothing/here")
    assert missing.status_code == 404
    assert set(missing.get_json()) == {"error"}
    wrong_method = client.get(INFER)
    assert wrong_method.status_code == 405
    assert isinstance(wrong_method.get_json()["error"], str)
    not_json = client.post(INFER, data=b"{", content_type="application/json")
    assert not_json.status_code == 400
    assert not_json.get_json()["error"].startswith("the request is not valid JSON")


def test_infer_answers_classification_strings(client, fake_model, cat_jpeg):
    answer = client.post(INFER, json=_body(cat_jpeg.data, k=2))
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("fake_net", "1", "req-1")
    output = body["outputs"][0]
    assert output["shape"] == [1, 2] and output["datatype"] == "BYTES"
    assert output["data"][0] == "0.600000:281:tiger cat"
    assert fake_model.calls[0]["top_k"] == 2


def test_infer_answers_every_probability_by_default(client, fake_model, cat_jpeg):
    output = client.post(INFER, json=_body(cat_jpeg.data)).get_json()["outputs"][0]
    assert fake_model.calls[0]["top_k"] == 1000  # the model lists every class
    assert output["datatype"] == "FP32"
    assert output["shape"] == [1, len(output["data"])]
    assert output["data"][281] == pytest.approx(0.6)


def test_binary_tensor_without_a_content_type(client, cat_jpeg):
    tensor = struct.pack("<I", len(cat_jpeg.data)) + cat_jpeg.data
    header = (
        b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1,1],'
        b'"parameters":{"binary_data_size":%d}}]}' % len(tensor)
    )
    answer = client.post(
        INFER, data=header + tensor, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert answer.status_code == 200, answer.get_json()


def test_photos_of_one_request_are_in_flight_together(make_app, fake_model, photos):
    """Three photos reach the model tier at once (so they can batch there), and come back in order."""
    arrived = threading.Barrier(3, timeout=10)
    classify = fake_model.classify

    def held(*args, **kwargs):
        arrived.wait()  # breaks (and fails the request) unless all three are being sent at once
        return classify(*args, **kwargs)

    fake_model.classify = held
    app = make_app(decode_in_web=False)
    images = [photos["chelsea.jpg"].data, photos["coffee.jpg"].data, photos["china.jpg"].data]
    with app.test_client() as client:
        answer = client.post(INFER, json=_body(*images, k=1), headers={"X-Request-ID": "batch7"})
    assert answer.status_code == 200, answer.get_json()
    assert sorted(call["request_id"] for call in fake_model.calls) == ["batch7.0", "batch7.1", "batch7.2"]
    assert {bytes(call["image"]) for call in fake_model.calls} == set(images)
    assert admission(app.config["ZEROLENS"]).in_flight == 0  # every ticket given back


def test_a_refused_photo_fails_the_request_naming_it(client, fake_model, cat_jpeg):
    bad = client.post(INFER, json=_body(cat_jpeg.data, b"not a photo"))
    assert bad.status_code == 400
    assert bad.get_json()["error"].startswith("element 1 of input 'image': ")
    assert fake_model.calls == []  # checked before anything is sent
    fake_model.status, fake_model.error = Status.OVERLOADED, "queue full"
    busy = client.post(INFER, json=_body(cat_jpeg.data, cat_jpeg.data))
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert "busy" in busy.get_json()["error"]


def test_too_many_photos_are_refused(make_app, cat_jpeg):
    with make_app(max_images_per_request=2).test_client() as client:
        answer = client.post(INFER, json=_body(*[cat_jpeg.data] * 3))
    assert answer.status_code == 400
    assert "one request takes 1 to 2" in answer.get_json()["error"]


def test_the_loops_door_admits_oip_infer_too(app, fake_model, cat_jpeg, tiers):
    door = app.extensions[DOOR]
    gate = admission(app.config["ZEROLENS"])
    gate.limit = 1.0
    assert door(b"GET", b"/v2/models/fake_net") is None  # metadata: not governed
    ticket = door(b"POST", b"/v2/models/fake_net/versions/1/infer")
    assert ticket and door(b"POST", b"/v2/models/fake_net/infer") is False  # full: refused by the loop
    with app.test_client() as client:
        answer = client.post(INFER, json=_body(cat_jpeg.data, cat_jpeg.data), environ_base={ADMITTED: ticket})
    assert answer.status_code == 200 and len(fake_model.calls) == 2  # one place: the photos went one by one
    assert gate.in_flight == 0 and ticket.closed
