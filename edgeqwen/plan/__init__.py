"""`edgeqwen plan`: which Qwen model and which profile fit a device, from measured estimates (numpy only)."""
