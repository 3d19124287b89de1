"""aeatrain: distributed training of Augmented Equivariant Attention Networks (AEANets)
for super-resolving scanning-electron-microscopy images from physically acquired
low/high-resolution pairs."""

__version__ = "0.1.0"
