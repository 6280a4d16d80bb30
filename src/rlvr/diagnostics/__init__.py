"""Diagnostics: measurements of a recipe at a checkpoint that train nothing.

    noise.py    `rlvr noise`: gradient noise scale of the RL update (per group) and of SFT (per example)
"""
