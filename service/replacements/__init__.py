"""Our own versions of upstream code, where the upstream one was measured too slow:

- uvicorn_protocol: uvicorn's httptools protocol (`pixelsync serve`, cli.UVICORN_HTTP);
- redis_wire: redis-py's command packer and pipelines, on redis:// servers (store/ only);
- partner_transport: httpcore's pool under the partner httpx client (app.py).

README.md says what each replaces, why, and what upstream behaviour it relies on. Each
module is imported by its own user only: nothing is re-exported here, so importing one
does not load the others' dependencies.
"""
