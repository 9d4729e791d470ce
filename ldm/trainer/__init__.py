"""Lightning glue for main.py: CLI, run folders, callbacks (setup, images, checkpoints, signals, progress), loggers.

Modules: `cli` (flags, overrides, resume), `logdir` (run folder layout), `build` (Trainer arguments, lr scaling,
step translation, default callbacks), `callbacks` (SetupCallback, BatchLimit, CUDACallback), `image_logger`,
`checkpointing` (LDMModelCheckpoint), `checkpoint_io` (AtomicCheckpointIO), `signals` (SIGUSR1), `progress`
(throughput, skipped files), `loggers` (wandb / CSV / TensorBoard).
"""
