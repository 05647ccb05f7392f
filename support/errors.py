"""The one error every checkpoint reader raises, in a module of its own so that the readers of
each format (checkpoints.py, hf_checkpoint.py, hf_tokenizer.py) can share it without importing
each other."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded. The message names the file and the problem."""
