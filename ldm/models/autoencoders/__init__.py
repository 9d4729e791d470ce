"""First-stage autoencoders: one module per regularizer, a shared adversarial training loop in `base`."""
