"""What is done with trained models, on top of the trainer: predict, export, figures
(:mod:`~capsnet.tools.viz`), robustness sweeps, benchmarks, the paper's experiments,
generalisation studies and the explorer. Nothing here parses arguments (the CLI does)."""
