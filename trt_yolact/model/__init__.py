"""The network and everything done to its weights: loading, fusing, pruning, counting."""
