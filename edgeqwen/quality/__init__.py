"""Quality measurement, below the compiler, ``validate`` and ``bench``: metrics from logits (numpy),
the fp32 transformers reference, the windowed comparison behind quality reports, and validation."""
