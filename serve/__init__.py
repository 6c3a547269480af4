"""Inference on a fine-tuned model dir, shared by the HTTP server (``serve``) and
the file predictor (``serve.predict``): ``engine`` loads the model and predicts a batch,
``batcher`` merges concurrent HTTP requests into one forward pass."""
