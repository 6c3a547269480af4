"""Inference on a fine-tuned model dir, shared by the HTTP server (``pretrain.finetune.serve``) and
the file predictor (``pretrain.finetune.predict``): ``engine`` loads the model and predicts a batch,
``batcher`` merges concurrent HTTP requests into one forward pass."""
