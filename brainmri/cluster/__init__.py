"""SLURM through submitit: where each task runs (``binding``), what a partition offers and the
check before submitting (``partition``), waiting on jobs through squeue (``waiting``), the
executor and the requeueable TrainJob (``jobs``), sweep files, trials and the manifest
(``sweep``) and a sweep submitted as one job array (``sweep_jobs``). Layer 4: it imports
training and everything below it."""
