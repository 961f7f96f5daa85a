"""Triton's and KServe's own clients classify real photos through the whole system (KServe v2 protocol)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

pytestmark = pytest.mark.integration

CATS = {"tabby", "tiger cat", "Egyptian cat"}
MODEL = "efficientnet_lite0"


def _base(stack) -> str:
    _, web = stack
    return f"127.0.0.1:{web.ports['http']}"


def _labels(strings) -> list[str]:
    """The labels of Triton's "score:index:label" classification strings."""
    return [(s.decode() if isinstance(s, bytes) else s).split(":", 2)[2] for s in strings]


def test_triton_client_checks_health_and_metadata(stack):
    client = triton.InferenceServerClient(_base(stack))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("resnet50")
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert metadata["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1, 1]}
    assert "classification" in client.get_server_metadata()["extensions"]


def test_triton_client_classifies_photos_in_one_request(stack, photos):
    client = triton.InferenceServerClient(_base(stack))
    images = [photos["chelsea.jpg"].data, photos["coffee.jpg"].data, photos["china.jpg"].data]
    tensor = triton.InferInput("image", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1), binary_data=True)
    wanted = triton.InferRequestedOutput("probabilities", class_count=3)
    result = client.infer(MODEL, [tensor], outputs=[wanted])
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 3)
    assert CATS & set(_labels(top[0]))
    assert _labels(top[1])[0] == "espresso"
    assert _labels(top[2])[0] == "palace"


def test_triton_client_reads_every_probability(stack, photos):
    client = triton.InferenceServerClient(_base(stack))
    tensor = triton.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[photos["coffee.jpg"].data]], dtype=np.object_))
    probabilities = client.infer(MODEL, [tensor]).as_numpy("probabilities")
    assert probabilities.shape == (1, 1000)
    assert probabilities.sum() == pytest.approx(1.0, abs=0.01)
    assert int(probabilities[0].argmax()) == 967  # espresso


def test_kserve_client_classifies_a_photo(stack, photos):
    base = f"http://{_base(stack)}"

    async def run() -> tuple[bool, bool, object]:
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            tensor = InferInput("image", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[photos["chelsea.jpg"].data]], dtype=np.object_))
            request = InferRequest(model_name=MODEL, infer_inputs=[tensor], request_id="kserve-1")
            live = await client.is_server_live(base)
            ready = await client.is_server_ready(base)
            return live, ready, await client.infer(base, request, model_name=MODEL)
        finally:
            await client._client.aclose()

    live, ready, response = asyncio.run(run())
    assert live and ready
    assert response.id == "kserve-1"
    probabilities = response.outputs[0].as_numpy()
    assert probabilities.shape == (1, 1000)
    assert int(probabilities[0].argmax()) in {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def test_plain_json_with_base64_photos(stack, photos):
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(photos["coffee.jpg"].data).decode()],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }
    url = f"http://{_base(stack)}/v2/models/{MODEL}/infer"
    answer = requests.post(url, json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert _labels(answer.json()["outputs"][0]["data"]) == ["espresso"]
    bad = requests.post(url, json={**body, "inputs": [{**body["inputs"][0], "data": ["bm90IGEgcGhvdG8="]}]})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("element 0 of input 'image': ")
