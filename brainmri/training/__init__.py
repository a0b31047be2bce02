"""Training a run: the accelerator, precision and what all ranks share (``distributed``), the
optimizer and schedule (``optim``), run preparation (``preparation``), the step and what it is
built from (``step``), checkpoints (``checkpoint``), the Trainer and its loop (``engine``), the
throughput benchmark (``bench``) and the train command every launcher runs (``entry``).
Layer 3: it imports the layers below (foundations, data, models, scoring, reporting)."""
