"""Click-through-rate models (DeepFM, DCN-v2) trained on impressions with CowClip."""
