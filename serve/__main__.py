"""``python -m serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [options]``: the HTTP server of
``serve/server.py`` over a fine-tuned model dir."""

from serve.server import main

main()
