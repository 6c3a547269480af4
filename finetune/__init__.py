"""Fine-tuning stage: a pretrained BERT + a labelled text set -> a sequence classifier + eval report.

``python -m finetune --config configs/finetune/NAME.yaml [key=value ...]``; from Python,
``finetune.train.run(config)``. Kept free of imports so that importing the package is cheap.
"""


class InputError(ValueError):
    """A user-caused problem with an input file or the base checkpoint; the message is one line
    that names the file, column or label and says how to fix it."""
