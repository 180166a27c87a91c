"""Model packs: manifests, the model cache, and the readers/decoders facegate writes itself."""
