"""What people see: rich console output (``console``), figures (``figures``), Grad-CAM
(``cam``), W&B, offline-first and never fatal (``tracking``), and the Reporter that shows a run
as it trains (``reporter``). Layer 2: it imports the foundations, data, models and scoring."""
