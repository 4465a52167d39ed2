"""Learner contract, checkpoint store and CTR models (DeepFM/DCN with CowClip)."""
