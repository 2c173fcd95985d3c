"""Plain nn.Module generators, discriminators, critics, encoders and decoders (no Lightning)."""
