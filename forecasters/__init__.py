"""Online forecasters: OneNet-style online ensembling, CARD transformers and baselines."""
