"""Building blocks shared by several methods (no method lives here, and nothing here imports one).

* :mod:`~methods.shared.dense`: the artifact of a dense LightGCN (reference, UnKD, random drop);
* :mod:`~methods.shared.masking`: masked embedding tables, their sparse storage and random masks
  (random drop, magnitude pruning, DSL, LightGNN);
* :mod:`~methods.shared.composition`: compositional embeddings, a codebook composed through a
  sparse assignment, with METIS initialisation (LEGCF, LERG);
* :mod:`~methods.shared.composition_training`: training such a model in stages the LEGCF way
  (LEGCF, LERG);
* :mod:`~methods.shared.quantization`: LSQ fake quantisation (LERG's codebook).
"""
