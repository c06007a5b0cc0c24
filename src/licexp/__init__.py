"""licexp: quantisation in learned image compression, as swappable experiments."""
