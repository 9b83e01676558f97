"""Model work: MNIST-faithful preprocessing, the CNNs, training, evaluation and inference."""
