"""Data: tokenizers (byte-level default, Hugging Face adapter), pretraining corpora (the embedded
arithmetic/Countdown corpus and TFDS text datasets) and packing into resumable batches."""
