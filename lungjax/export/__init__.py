"""``--mode export``: a checkpoint as a self-contained bundle that ``python -m lungjax.serve`` runs.

``<workdir>/export/<step>/`` holds, for the checkpoint ``config.eval.checkpoint`` names:

* ``model.jax``: the inference function, uint8 images ``(N, S, S, 1)`` -> float32 probabilities
  ``(N, C)`` (softmax over the classes, or a sigmoid per finding) and float32 features ``(N, D)`` (the
  pooled penultimate features, for the out-of-distribution score), serialised with ``jax.export``
  for CPU and CUDA, any N, the weights baked in as constants and float32 compute;
  ``model_bf16.jax`` beside it when the checkpoint trained in bfloat16 (``half_precision``).
  Loading one needs JAX alone: ``jax.export.deserialize(bytearray(data)).call(images)``.
* ``manifest.json``: what a caller must know and nothing it must guess (``manifest.py``): the task
  and what an output means, the input contract (the preprocessing before the model, the pixel
  scaling inside it), each operating point's per-class thresholds and the calibration
  temperatures fitted on validation, the out-of-distribution threshold, provenance (the training
  sources among it), and the sha256 of every other file.
* ``ood.npz``: the out-of-distribution score's training-feature mean and covariance; its threshold,
  chosen on validation, is in the manifest (``lungjax.evaluation.out_of_distribution``).
* ``config.json``: the config saved with the checkpoint (its sha256 is in the manifest).
* ``parity.json``: each exported file, deserialised, against the in-process model on validation
  images (``parity.py``): the largest probability difference measured, and its bound.

The bundle is written aside and renamed into place, so it is whole or absent. Nothing in the
library imports this package: it sits above evaluation, which it reuses.
"""
