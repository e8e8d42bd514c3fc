"""Studies and analyses built on the engine's run folders.

- :mod:`figkd.analysis.study`: FiGKD against the baselines (and its ablations) over seeds,
  one command per tier (``figkd study``).
- :mod:`figkd.analysis.frequency`: the wavelet bands of trained models' logit maps (paper Fig. 5).
- :mod:`figkd.analysis.tsne`: t-SNE of student embeddings (paper Fig. 6).
- :mod:`figkd.analysis.runs`: rebuild a trained model and its test split from a run folder.
"""
