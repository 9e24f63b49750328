"""The LRKD student: a BERT cross-encoder with a latent reasoning extractor, its losses, and training.

Modules: ``config`` (StudentConfig, VariantConfig and the default variants table), ``extractors``
(the paper's MLP, Poly-encoder and GAT extractors), ``model`` (Student, save/load, InferenceWrapper),
``objectives`` (guidance loss and the training-only heads of the CED-KD, MKD and CRSD baselines) and
``trainer`` (train_student, predict).
"""
