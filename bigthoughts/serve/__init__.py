"""``bigthoughts serve``: an OpenAI-compatible HTTP server with consensus voting.

* :mod:`~bigthoughts.serve.schema` validates requests into OpenAI-style errors;
* :mod:`~bigthoughts.serve.handlers` turns a request into prompts and a vote;
* :mod:`~bigthoughts.serve.batcher` batches concurrent requests into engine calls;
* :mod:`~bigthoughts.serve.respond` writes OpenAI response bodies and SSE chunks;
* :mod:`~bigthoughts.serve.app` is the FastAPI app and its uvicorn runners.

Example (any OpenAI client)::

    bigthoughts serve --port 8000
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")
    client.chat.completions.create(model="gemma3-270m", messages=[...],
                                   extra_body={"vote": {"k": 5}})
"""
