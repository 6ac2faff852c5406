"""CLIP model, contrastive trainer (CPU, one GPU, torchrun/DDP) and zero-shot evaluation.

Not built yet (issues 6 and 7).
"""
