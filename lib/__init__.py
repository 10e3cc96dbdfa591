"""The modules the scripts share and nobody runs: files and checkpoints, command-line helpers, the training
and evaluation loops, the synthetic faces, and the optional capabilities (alignment, probes, executors)."""
