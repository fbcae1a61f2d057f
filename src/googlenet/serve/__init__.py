"""Serving a checkpoint: a web page and a JSON API (FastAPI + uvicorn, the [serve] extra), with dynamic
batching of concurrent requests. ``googlenet serve CKPT`` starts it; :func:`create_app` builds it in Python."""
