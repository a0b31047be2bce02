"""The numbers of a model's predictions: classification metrics (``metrics``), temperature
scaling (``calibration``) and flip test-time augmentation (``tta``). Layer 1: it imports only
the foundations (config, errors, records, rundir)."""
