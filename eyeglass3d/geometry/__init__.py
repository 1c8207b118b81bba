"""Pure tensor/array maths: alignment crops, cameras, lighting. No models, no I/O."""
