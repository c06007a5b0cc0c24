"""licexp: quantisation in learned image compression, as swappable experiments."""

import warnings

# compressai 1.2.8 scripts a helper with torch.jit at import time, which recent torch
# deprecates; the warning says nothing about licexp and would greet every command.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)
# Lightning 2.6 calls a torch pytree API that torch deprecates, once per fit.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
