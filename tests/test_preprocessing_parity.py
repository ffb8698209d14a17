"""One preprocessing everywhere: training, the Triton preprocessing model and the client give identical tensors."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.triton


def _server_pixels(server, image: bytes) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.endpoints["grpc"])
    payload = np.array([[image]], dtype=object)
    request = grpcclient.InferInput("image", list(payload.shape), "BYTES")
    request.set_data_from_numpy(payload)
    response = client.infer("aigi_preprocess", [request], outputs=[grpcclient.InferRequestedOutput("pixel_values")])
    client.close()
    return response.as_numpy("pixel_values")[0]


def test_preprocessing_is_identical_when_training_server_and_client_see_the_same_image(
    triton_server, serve_checkpoint, sample_images: list[bytes]
) -> None:
    from aigi.checkpoint import load_meta
    from aigi.client.images import prepare
    from aigi.preprocessing import DEFAULT_MAX_PIXELS, decode_image
    from aigi.training.data import ImageDataset

    spec = load_meta(serve_checkpoint).preprocessing
    for image in sample_images:
        training = ImageDataset([decode_image(image)], [0], spec)[0][0].numpy()
        client = prepare(image, 0, spec, DEFAULT_MAX_PIXELS).payload
        server = _server_pixels(triton_server, image)
        assert training.shape == (3, spec.size, spec.size)
        np.testing.assert_array_equal(training, client)
        np.testing.assert_array_equal(training, server)
