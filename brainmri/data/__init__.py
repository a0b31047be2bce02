"""The data layer: the two Kaggle layouts (``samples``), each image decoded and verified once
(``scan``, ``scan_memo``), duplicate groups and the splits that keep them whole (``groups``,
``splits``), the decoded-image cache (``cache``), per-image and batched augmentation
(``transforms``, ``batch_augment``) and the loaders of either pipeline (``dataset``,
``loaders``). It imports only the foundations (config, errors, records, rundir)."""
