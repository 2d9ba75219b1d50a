"""A small typed client for mnist-serving's native API (`/v1/predict`) and image upload
(`/v1/predict/image`), blocking (`Client`) or asyncio (`AsyncClient`).

    from mnist_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        print(client.predict_files(["digit.png"])[0].digit)

It needs only httpx and NumPy (no TensorFlow). Requests carry 90% of the client's timeout as
the server's time budget (`X-Request-Timeout-Ms`), so an overloaded server refuses at once
instead of answering after the client gave up; refusals (503, 429) are retried a bounded
number of times after the `Retry-After` the server sends, and so are connections that fail
before an answer.
"""

from mnist_client.client import AsyncClient, Client, Prediction, ServerError

__all__ = ["AsyncClient", "Client", "Prediction", "ServerError"]
