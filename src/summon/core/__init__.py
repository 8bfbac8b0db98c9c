"""What every layer may use: typed configs, registries, text checks, the version, recipe files.

Nothing here imports torch, so ``summon --help`` and ``summon recipes`` start at once.
"""
