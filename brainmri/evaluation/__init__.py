"""Trained models judged: loading a run or a bare weights file and scoring it (``trained``), a
refit's temperature from its CV folds (``refit``), confident learning on out-of-fold
probabilities (``labels``), the dataset audit (``audit``), a cross-validated sweep's table,
figures and W&B summary (``cv_report``) and a sweep's report (``sweep_report``). Layer 5, the
top of the library: it may import every layer below."""
