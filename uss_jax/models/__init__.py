"""Model architectures, one file per family (``cnn14`` for PANNs Cnn14 / Cnn14_DecisionLevelMax, ...)."""
