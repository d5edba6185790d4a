"""The library beneath the scripts: configuration, checkpoints, optimisation, the speed kernels,
distributed training, the two evaluation-time methods (cache and dynamic evaluation) and the
command-line helpers. Nothing here imports a script."""
